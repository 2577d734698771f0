//! The bytes under a socket: the write buffer, held only while there is something to
//! write.
//!
//! tungstenite formats every frame it sends into a write buffer of its own that keeps its
//! largest size for the connection's life, so an idle console held on to its biggest
//! burst ever (1.2 KiB for the `presence` frames of a ten-person room: a fifth of an idle
//! connection's memory, docs/benchmarks.md). [`Wire`] sits between tungstenite and the
//! TCP stream instead: [`Socket`](super::socket::Socket) frames its text and pings
//! here itself ([`Wire::push_text`], [`Wire::push_ping`]), what tungstenite writes (pongs,
//! the close frame) is appended behind them, and a flush that empties the buffer frees
//! it. Reads pass straight through to tungstenite.
//!
//! Frames are whole in the buffer and leave in the order they were put there, so
//! tungstenite's frames never split ours. Server frames are not masked (RFC 6455, 5.1).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes tungstenite's own frames may find buffered. A peer that sends pings and
/// reads nothing would otherwise grow the buffer with pongs; past this, its write fails
/// and the socket is closed. (What the socket's task frames here is bounded by the task:
/// 16 KiB and one frame per flush.)
const MAX_BUFFERED: usize = 1 << 20;

/// The first byte of a final (unfragmented) frame, by opcode.
const TEXT: u8 = 0x80 | 0x1;
const PING: u8 = 0x80 | 0x9;

/// A stream with a write buffer that exists only while it holds bytes.
pub struct Wire<S> {
    stream: S,
    out: Vec<u8>,
    /// Bytes of `out` already written to `stream`.
    written: usize,
}

impl<S> Wire<S> {
    pub fn new(stream: S) -> Wire<S> {
        Wire {
            stream,
            out: Vec::new(),
            written: 0,
        }
    }

    /// Appends a text frame carrying `text`.
    pub fn push_text(&mut self, text: &str) {
        self.push_frame(TEXT, text.as_bytes());
    }

    /// Appends an empty ping frame.
    pub fn push_ping(&mut self) {
        self.push_frame(PING, &[]);
    }

    /// Bytes waiting to be written.
    pub fn buffered(&self) -> usize {
        self.out.len() - self.written
    }

    fn push_frame(&mut self, first: u8, payload: &[u8]) {
        let len = payload.len();
        self.out.reserve(len + 10);
        self.out.push(first);
        if len < 126 {
            self.out.push(len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            self.out.push(126);
            self.out.extend_from_slice(&len.to_be_bytes());
        } else {
            self.out.push(127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.out.extend_from_slice(payload);
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    /// Writes what is buffered; once all of it has left, the buffer is freed.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.stream).poll_write(cx, &self.out[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Wire<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

/// What tungstenite writes (its control frames) joins the buffer, behind what is there.
impl<S: AsyncWrite + Unpin> AsyncWrite for Wire<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.buffered() + buf.len() > MAX_BUFFERED {
            return Poll::Ready(Err(io::Error::other(
                "write buffer full: the peer does not read",
            )));
        }
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// What a client reads from frames framed here, of every length class, with one of
    /// tungstenite's own frames between them; and the buffer is gone once flushed.
    #[tokio::test]
    async fn frames_written_here_read_back_whole_and_in_order() {
        let (server, client) = tokio::io::duplex(1 << 20);
        // As the server configures it: tungstenite's frames go straight to the wire.
        let config = WebSocketConfig::default().write_buffer_size(0);
        let mut server =
            WebSocketStream::from_raw_socket(Wire::new(server), Role::Server, Some(config)).await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let texts: Vec<String> = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]
            .into_iter()
            .map(|len| "é".repeat(len / 2) + &"x".repeat(len % 2))
            .collect();
        for text in &texts[..4] {
            server.get_mut().push_text(text);
        }
        server.get_mut().push_ping();
        server
            .feed(Message::Pong(Default::default()))
            .await
            .expect("a frame of tungstenite's own");
        for text in &texts[4..] {
            server.get_mut().push_text(text);
        }
        assert!(server.get_ref().buffered() > 0);
        server.flush().await.expect("flush");
        assert_eq!(server.get_ref().buffered(), 0);
        assert_eq!(server.get_ref().out.capacity(), 0, "the buffer is freed");
        for text in &texts[..4] {
            let got = client.next().await.expect("frame").expect("valid");
            assert_eq!(got, Message::Text(text.as_str().into()));
        }
        // The client answers the ping by itself; it still reads it.
        let got = client.next().await.expect("frame").expect("valid");
        assert!(matches!(got, Message::Ping(_)), "{got:?}");
        let got = client.next().await.expect("frame").expect("valid");
        assert!(matches!(got, Message::Pong(_)), "{got:?}");
        for text in &texts[4..] {
            let got = client.next().await.expect("frame").expect("valid");
            assert_eq!(got, Message::Text(text.as_str().into()));
        }
    }

    /// Pongs for a peer that never reads stop at the bound: the write fails.
    #[tokio::test]
    async fn tungstenites_writes_stop_at_the_bound() {
        use tokio::io::AsyncWriteExt;
        // A peer that reads nothing: 64 KiB of pipe, then every write waits.
        let (server, _client) = tokio::io::duplex(64 * 1024);
        let mut wire = Wire::new(server);
        let pong = [0x8a_u8, 0x7d]
            .iter()
            .copied()
            .chain([0; 125])
            .collect::<Vec<u8>>();
        let mut accepted = 0;
        let refused = loop {
            match wire.write(&pong).await {
                Ok(n) => accepted += n,
                Err(e) => break e,
            }
            assert!(accepted <= MAX_BUFFERED, "accepted {accepted} bytes");
        };
        assert!(
            accepted + pong.len() > MAX_BUFFERED,
            "refused early: {accepted}"
        );
        assert!(refused.to_string().contains("does not read"), "{refused}");
    }
}
