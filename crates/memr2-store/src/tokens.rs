//! Counting the size of memories in tokens.

/// Counts tokens in a text; the trainer plugs in the model's tokenizer.
pub trait TokenCounter: Send + Sync {
    /// Number of tokens in `text`.
    fn count(&self, text: &str) -> usize;

    /// Whether [`TokenCounter::count`] is exactly the number of whitespace-separated words,
    /// so that a store may answer from its running total instead of counting every entry.
    fn counts_whitespace_words(&self) -> bool {
        false
    }
}

/// Counts whitespace-separated words; the store's default measure of size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WhitespaceCounter;

impl TokenCounter for WhitespaceCounter {
    fn count(&self, text: &str) -> usize {
        whitespace_words(text)
    }

    fn counts_whitespace_words(&self) -> bool {
        true
    }
}

/// Number of whitespace-separated words in `text` (Unicode whitespace, like
/// [`str::split_whitespace`]), with a byte loop for ASCII text.
pub(crate) fn whitespace_words(text: &str) -> usize {
    if !text.is_ascii() {
        return text.split_whitespace().count();
    }
    // The ASCII characters with the Unicode White_Space property (vertical tab included).
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let bytes = text.as_bytes();
    // A word starts at every non-space byte that follows a space (or the start): counted
    // without branches, so that the loop vectorises.
    let first = bytes.first().is_some_and(|&b| !space(b));
    let starts = bytes
        .windows(2)
        .map(|pair| usize::from(space(pair[0]) & !space(pair[1])))
        .sum::<usize>();
    usize::from(first) + starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_counter_counts_words() {
        assert_eq!(WhitespaceCounter.count(""), 0);
        assert_eq!(WhitespaceCounter.count("  Alice moved\tto  Lyon\n"), 4);
        assert!(WhitespaceCounter.counts_whitespace_words());
    }

    proptest::proptest! {
        #[test]
        fn word_count_agrees_with_split_whitespace(
            text in proptest::prop_oneof!["[ -~\t\n\x0b\x0c\r]{0,40}", "\\PC{0,40}"],
        ) {
            proptest::prop_assert_eq!(whitespace_words(&text), text.split_whitespace().count());
        }
    }

    #[test]
    fn ascii_fast_path_agrees_with_split_whitespace() {
        for text in [
            "",
            " ",
            "a",
            " a b\x0bc\x0cd\re\n\tf ",
            "x\x1fy",
            "caf\u{e9} au\u{a0}lait\u{2003}ok",
        ] {
            assert_eq!(
                whitespace_words(text),
                text.split_whitespace().count(),
                "{text:?}"
            );
        }
    }
}
