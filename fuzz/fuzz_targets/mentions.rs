//! Arbitrary text as a note: `mentions::parse` never panics, and every name it returns is
//! non-empty, lower-case, at most 64 characters, and is the lower-cased form of a run of
//! allowed characters (an `@` allowed after the first) that follows an `@` in the input.
#![no_main]

use backchannel::mentions::{parse, MAX_MENTIONS};
use libfuzzer_sys::fuzz_target;

fn allowed(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Whether some run of allowed characters right after an `@` in `text` lower-cases to
/// `name` (lower-casing may add a combining mark: `İ` is `i` + U+0307).
fn follows_an_at(text: &str, name: &str) -> bool {
    text.match_indices('@').any(|(at, _)| {
        let rest = &text[at + 1..];
        rest.char_indices()
            .take_while(|&(i, c)| allowed(c) || (i > 0 && c == '@'))
            .map(|(i, c)| i + c.len_utf8())
            .any(|end| rest[..end].to_lowercase() == name)
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let names = parse(&text);
    assert!(names.len() <= MAX_MENTIONS);
    for (i, name) in names.iter().enumerate() {
        assert!(!name.is_empty());
        assert_eq!(*name, name.to_lowercase(), "not lower-case: {name:?}");
        assert!(name.chars().count() <= 64, "too long: {name:?}");
        assert!(
            !name.ends_with(['.', '-', '@']),
            "trailing punctuation: {name:?}"
        );
        assert!(
            follows_an_at(&text, name),
            "{name:?} is not allowed chars after an @ in {text:?}"
        );
        assert!(!names[..i].contains(name), "duplicate {name:?}");
    }
});
