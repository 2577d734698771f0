//! Finding `@mentions` in a note's text.
//!
//! A mention is `@` at the start of the text or after a character that cannot be part of
//! a name (so `bob@example.com` is not one), followed by a name of letters, digits, `_`,
//! `.`, `-` and, inside it, `@`: a handle may be an address (a token's `sub` lower-cased
//! is the default handle), and `@bob@acme.com` must name `bob@acme.com`, not `bob`.
//! Trailing `.`, `-` and `@` are punctuation, not part of the name ("thanks @alice.").
//! Names are compared lower-cased. Who a name refers to (an agent's handle or a team id)
//! is decided by the service against the directory.

/// Longest name considered.
const MAX_NAME: usize = 64;
/// Most distinct names taken from one note.
pub const MAX_MENTIONS: usize = 50;

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The distinct names mentioned in `text`, lower-cased, in order of first appearance.
pub fn parse(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        let starts_mention = c == '@' && !previous.is_some_and(is_name_char);
        previous = Some(c);
        if !starts_mention {
            continue;
        }
        let rest = &text[index + 1..];
        // A name starts with a name character; an `@` is part of it only further in.
        let end = if rest.starts_with(is_name_char) {
            rest.char_indices()
                .find(|&(_, c)| !is_name_char(c) && c != '@')
                .map_or(rest.len(), |(i, _)| i)
        } else {
            0
        };
        let name = rest[..end].trim_end_matches(['.', '-', '@']);
        // Counted after lower-casing, which can lengthen a name (`İ` is `i` + U+0307).
        let name = name.to_lowercase();
        if !name.is_empty() && name.chars().count() <= MAX_NAME && !names.contains(&name) {
            names.push(name);
            if names.len() == MAX_MENTIONS {
                break;
            }
        }
        // Skip the name so an `@` inside it does not start another mention.
        while chars.peek().is_some_and(|&(i, _)| i <= index + end) {
            if let Some((_, c)) = chars.next() {
                previous = Some(c);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn finds_handles_and_teams() {
        assert_eq!(
            parse("@Alice please loop in @billing-team, thanks @bob."),
            vec!["alice", "billing-team", "bob"]
        );
    }

    #[test]
    fn ignores_emails_and_lone_at_signs() {
        assert!(parse("write to carol@example.com @ noon").is_empty());
        assert_eq!(parse("(@dave)"), vec!["dave"]);
    }

    #[test]
    fn an_address_is_one_name_not_a_prefix_of_another() {
        // `@bob@acme.com` once notified `bob`; it names the handle `bob@acme.com`.
        assert_eq!(parse("@bob@acme.com please look"), vec!["bob@acme.com"]);
        assert_eq!(parse("cc @Bob@Acme.com."), vec!["bob@acme.com"]);
        assert_eq!(parse("@bob@ and @carol"), vec!["bob", "carol"]);
        assert_eq!(parse("@@bob"), vec!["bob"]);
    }

    #[test]
    fn deduplicates_and_handles_unicode() {
        assert_eq!(parse("@émile @Émile @émile"), vec!["émile"]);
        assert!(parse("@").is_empty());
        assert!(parse("@@@").is_empty());
    }

    #[test]
    fn lower_casing_cannot_lengthen_a_name_past_the_limit() {
        // Found while writing the `mentions` fuzz target: `İ` lower-cases to two chars.
        assert_eq!(parse("@İ"), vec!["i\u{307}"]);
        assert_eq!(parse(&format!("@{}", "İ".repeat(32))).len(), 1);
        assert!(parse(&format!("@{}", "İ".repeat(33))).is_empty());
        assert!(parse(&format!("@{}", "a".repeat(65))).is_empty());
    }
}
