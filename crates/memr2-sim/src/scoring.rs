//! Answer scoring (token F1, exact match, BLEU-1), per-category aggregation, and the reward.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::episode::Category;

/// SQuAD normalisation: lowercase, strip ASCII punctuation, remove the articles a/an/the,
/// fold whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tokens(s: &str) -> Vec<String> {
    normalize_answer(s)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Number of tokens of `pred` matched by tokens of `gold`, each gold token used at most once.
fn overlap(pred: &[String], gold: &[String]) -> usize {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for g in gold {
        *counts.entry(g.as_str()).or_default() += 1;
    }
    pred.iter()
        .filter(|p| match counts.get_mut(p.as_str()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        })
        .count()
}

/// Token F1 between normalised answers (SQuAD). When either side normalises to nothing, the
/// score is 1 if both do and 0 otherwise.
pub fn token_f1(pred: &str, gold: &str) -> f64 {
    let (p, g) = (tokens(pred), tokens(gold));
    if p.is_empty() || g.is_empty() {
        return f64::from(u8::from(p.is_empty() && g.is_empty()));
    }
    let common = overlap(&p, &g);
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// 1 when the normalised answers are equal, else 0.
pub fn exact_match(pred: &str, gold: &str) -> f64 {
    f64::from(u8::from(normalize_answer(pred) == normalize_answer(gold)))
}

/// BLEU-1 on normalised tokens: clipped unigram precision times the brevity penalty
/// `exp(1 - |gold| / |pred|)` when the prediction is shorter than the gold answer. An empty
/// prediction scores 1 against an empty gold answer and 0 otherwise.
pub fn bleu1(pred: &str, gold: &str) -> f64 {
    let (p, g) = (tokens(pred), tokens(gold));
    if p.is_empty() || g.is_empty() {
        return f64::from(u8::from(p.is_empty() && g.is_empty()));
    }
    let precision = overlap(&p, &g) as f64 / p.len() as f64;
    let bp = if p.len() >= g.len() {
        1.0
    } else {
        (1.0 - g.len() as f64 / p.len() as f64).exp()
    };
    precision * bp
}

/// The three scores of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AnswerScore {
    /// Token F1.
    pub f1: f64,
    /// Exact match.
    pub em: f64,
    /// BLEU-1.
    pub bleu1: f64,
}

/// Scores one answer against its gold answer.
pub fn score_answer(pred: &str, gold: &str) -> AnswerScore {
    AnswerScore {
        f1: token_f1(pred, gold),
        em: exact_match(pred, gold),
        bleu1: bleu1(pred, gold),
    }
}

/// Mean scores of a group of answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    /// Number of answers scored.
    pub count: usize,
    /// Mean token F1 (0 when nothing was scored).
    pub f1: f64,
    /// Mean exact match.
    pub em: f64,
    /// Mean BLEU-1.
    pub bleu1: f64,
}

/// Running sums of scores for one group of questions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreSums {
    /// Number of answers scored.
    pub count: usize,
    /// Sum of token F1.
    pub f1: f64,
    /// Sum of exact match.
    pub em: f64,
    /// Sum of BLEU-1.
    pub bleu1: f64,
}

impl ScoreSums {
    fn add(&mut self, s: AnswerScore) {
        self.count += 1;
        self.f1 += s.f1;
        self.em += s.em;
        self.bleu1 += s.bleu1;
    }

    fn merge(&mut self, o: &ScoreSums) {
        self.count += o.count;
        self.f1 += o.f1;
        self.em += o.em;
        self.bleu1 += o.bleu1;
    }

    /// Mean scores (all 0 when nothing was scored).
    pub fn mean(&self) -> ScoreSummary {
        if self.count == 0 {
            return ScoreSummary::default();
        }
        let n = self.count as f64;
        ScoreSummary {
            count: self.count,
            f1: self.f1 / n,
            em: self.em / n,
            bleu1: self.bleu1 / n,
        }
    }
}

/// Scores aggregated overall and per category.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreBoard {
    per_category: BTreeMap<Category, ScoreSums>,
}

impl ScoreBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scores an answer, records it under its category, and returns its scores.
    pub fn add(&mut self, category: Category, pred: &str, gold: &str) -> AnswerScore {
        let s = score_answer(pred, gold);
        self.add_score(category, s);
        s
    }

    /// Records an already computed score.
    pub fn add_score(&mut self, category: Category, score: AnswerScore) {
        self.per_category.entry(category).or_default().add(score);
    }

    /// Adds every score of another board.
    pub fn merge(&mut self, other: &ScoreBoard) {
        for (c, s) in &other.per_category {
            self.per_category.entry(*c).or_default().merge(s);
        }
    }

    /// Sums over every category.
    pub fn overall_sums(&self) -> ScoreSums {
        let mut total = ScoreSums::default();
        for s in self.per_category.values() {
            total.merge(s);
        }
        total
    }

    /// Mean scores over every answer.
    pub fn overall(&self) -> ScoreSummary {
        self.overall_sums().mean()
    }

    /// Mean scores of one category, if any answer of it was scored.
    pub fn category(&self, category: Category) -> Option<ScoreSummary> {
        self.per_category.get(&category).map(ScoreSums::mean)
    }

    /// The categories scored, in [`Category::ALL`] order, with their mean scores.
    pub fn categories(&self) -> Vec<(Category, ScoreSummary)> {
        self.per_category.iter().map(|(c, s)| (*c, s.mean())).collect()
    }

    /// Mean scores over the answers of every category but [`Category::Adversarial`] (the
    /// figure LoCoMo results report).
    pub fn overall_non_adversarial(&self) -> ScoreSummary {
        let mut total = ScoreSums::default();
        for (_, s) in self
            .per_category
            .iter()
            .filter(|(c, _)| **c != Category::Adversarial)
        {
            total.merge(s);
        }
        total.mean()
    }

    /// Total number of answers scored.
    pub fn count(&self) -> usize {
        self.overall_sums().count
    }
}

/// The memory-size penalty `c = max(0, m - 0.7 s) / s` for `m` memory tokens after `s` session
/// tokens so far; 0 when `s` is 0.
pub fn memory_penalty(memory_tokens: usize, session_tokens_so_far: usize) -> f64 {
    if session_tokens_so_far == 0 {
        return 0.0;
    }
    let s = session_tokens_so_far as f64;
    (memory_tokens as f64 - 0.7 * s).max(0.0) / s
}

/// The reward `F1 - lambda * c`.
pub fn reward(f1: f64, c: f64, lambda: f64) -> f64 {
    f1 - lambda * c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        assert_eq!(
            normalize_answer("  An apple, a pear; the end. "),
            "apple pear end"
        );
        assert_eq!(normalize_answer("theater"), "theater");
        assert_eq!(normalize_answer("7 May 2023"), "7 may 2023");
        assert_eq!(normalize_answer("J.K. Rowling"), "jk rowling");
        assert_eq!(normalize_answer(""), "");
    }

    #[test]
    fn f1_hand_worked() {
        // pred {in, lyon}, gold {lyon}: p = 1/2, r = 1, f1 = 2/3.
        assert!(close(token_f1("in Lyon", "Lyon"), 2.0 / 3.0));
        assert!(close(token_f1("The chef.", "chef"), 1.0));
        assert!(close(token_f1("Paris", "Lyon"), 0.0));
        // Repeated tokens count once per gold occurrence: p = 1/3, r = 1/2, f1 = 0.4.
        assert!(close(token_f1("dog dog cat", "dog bird"), 0.4));
        assert!(close(token_f1("", ""), 1.0));
        assert!(close(token_f1("", "Lyon"), 0.0));
        assert!(
            close(token_f1("the", ""), 1.0),
            "articles alone normalise to nothing"
        );
        // Integer gold answers arrive as their decimal string.
        assert!(close(token_f1("in 2022", &2022.to_string()), 2.0 / 3.0));
        assert!(close(token_f1("3", "3"), 1.0));
    }

    #[test]
    fn exact_match_and_bleu() {
        assert!(close(exact_match("The Chef!", "chef"), 1.0));
        assert!(close(exact_match("chef cook", "chef"), 0.0));
        assert!(close(bleu1("chef", "chef"), 1.0));
        // Longer prediction ("chef in lyon"): precision 1/3, no brevity penalty.
        assert!(close(bleu1("a chef in Lyon", "chef"), 1.0 / 3.0));
        // Shorter prediction: precision 1, penalty exp(1 - 2/1).
        assert!(close(bleu1("Lyon", "Lyon France"), (-1.0f64).exp()));
        assert!(close(bleu1("", "x"), 0.0));
        assert!(close(bleu1("", ""), 1.0));
    }

    #[test]
    fn board_aggregates_and_merges() {
        let mut a = ScoreBoard::new();
        a.add(Category::SingleHop, "Lyon", "Lyon");
        a.add(Category::SingleHop, "Paris", "Lyon");
        let mut b = ScoreBoard::new();
        b.add(Category::Temporal, "nurse", "nurse");
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert!(close(a.category(Category::SingleHop).unwrap().f1, 0.5));
        assert!(close(a.overall().em, 2.0 / 3.0));
        assert_eq!(a.overall().count, 3);
        assert!(a.category(Category::MultiHop).is_none());
        a.add(Category::Adversarial, "yes", "no");
        assert!(close(a.overall_non_adversarial().f1, 2.0 / 3.0));
        assert!(close(a.overall().f1, 0.5));
        let cats: Vec<Category> = a.categories().into_iter().map(|(c, _)| c).collect();
        assert_eq!(
            cats,
            vec![Category::SingleHop, Category::Temporal, Category::Adversarial]
        );
        assert!(close(ScoreBoard::new().overall().f1, 0.0));
    }

    #[test]
    fn penalty_and_reward() {
        assert!(close(memory_penalty(10, 0), 0.0));
        assert!(close(memory_penalty(70, 100), 0.0));
        assert!(close(memory_penalty(100, 100), 0.3));
        assert!(close(reward(0.8, 0.3, 0.3), 0.71));
    }
}
