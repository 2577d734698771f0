//! Arbitrary bytes as a WebSocket text frame: `decode` never panics, and a frame it
//! accepts has a `type` the protocol lists, equal to the `type` sent.
#![no_main]

use backchannel_protocol::client::{decode, DecodeError, CLIENT_FRAME_TYPES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let decoded = decode(text);
    match &decoded.frame {
        Ok(frame) => {
            assert!(CLIENT_FRAME_TYPES.contains(&frame.kind()));
            assert_eq!(decoded.is_ping(), frame.kind() == "ping");
        }
        Err(DecodeError::UnknownType(kind)) => {
            assert!(!CLIENT_FRAME_TYPES.contains(&kind.as_str()));
        }
        Err(DecodeError::InvalidFields { kind, .. }) => {
            assert!(CLIENT_FRAME_TYPES.contains(&kind.as_str()));
        }
        Err(DecodeError::NotAnObject(_)) => assert!(decoded.reference.is_none()),
        Err(_) => {}
    }
    // The error message is what the server sends back: building it must not panic.
    if let Err(e) = &decoded.frame {
        let _ = e.to_string();
    }
});
