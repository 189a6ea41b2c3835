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

/// Number of whitespace-separated words in `text`.
pub(crate) fn whitespace_words(text: &str) -> usize {
    text.split_whitespace().count()
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
}
