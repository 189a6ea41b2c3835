//! Oracle traces for the supervised warm start: gold memory operations for a fact given any
//! memory state, and a seeded, deliberately imperfect teacher.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::attribute::{Attribute, PREVIOUSLY};
use crate::episode::{Episode, Turn};
use crate::error::SimError;
use crate::fact::{Change, Fact, facts_in_chunk};

/// One memory operation, addressed by the alias the memory was shown under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "UPPERCASE")]
pub enum OracleOp {
    /// Store a new memory.
    Add {
        /// The memory text.
        text: String,
    },
    /// Replace the text of a shown memory.
    Update {
        /// The alias of the memory.
        #[serde(rename = "id")]
        alias: String,
        /// The new text.
        text: String,
    },
    /// Remove a shown memory.
    Delete {
        /// The alias of the memory.
        #[serde(rename = "id")]
        alias: String,
    },
}

/// Lower-case alphanumeric words of a text ("Alice's" gives "alice", "s").
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether the word sequence `phrase` occurs in `hay`.
fn has_phrase(hay: &[String], phrase: &str) -> bool {
    let p = words(phrase);
    !p.is_empty() && hay.windows(p.len()).any(|w| w == p.as_slice())
}

/// The part of a memory text that states the current value (before "previously").
fn current_part(text: &str) -> Vec<String> {
    let w = words(text);
    match w.iter().position(|x| x == PREVIOUSLY) {
        Some(i) => w[..i].to_vec(),
        None => w,
    }
}

/// Whether a memory text is about the fact's subject and attribute: it names the subject and
/// either a value of the attribute, one of its keywords, or the fact's own values.
fn is_about(fact: &Fact, text: &str) -> bool {
    let w = words(text);
    if !has_phrase(&w, &fact.subject) {
        return false;
    }
    let attribute = Attribute::from_name(&fact.attribute);
    let values = attribute.map_or(&[][..], |a| a.values());
    let keywords = attribute.map_or(&[][..], |a| a.keywords());
    values.iter().chain(keywords).any(|p| has_phrase(&w, p))
        || has_phrase(&w, &fact.value)
        || fact.previous.as_deref().is_some_and(|p| has_phrase(&w, p))
}

/// The first attribute value stated as current in a memory text, if any.
fn stated_value(attribute: Option<Attribute>, text: &str) -> Option<&'static str> {
    let w = current_part(text);
    attribute?.values().iter().copied().find(|v| has_phrase(&w, v))
}

/// The memory text for a fact that sets a value, keeping the value it replaces.
fn state_text(fact: &Fact, previous: Option<&str>) -> String {
    match Attribute::from_name(&fact.attribute) {
        Some(a) => match previous.filter(|p| *p != fact.value) {
            Some(p) => a.updated_sentence(&fact.subject, &fact.value, p),
            None => a.state_sentence(&fact.subject, &fact.value),
        },
        None => match previous.filter(|p| *p != fact.value) {
            Some(p) => format!("{}, {PREVIOUSLY} {p}", fact.text),
            None => fact.text.clone(),
        },
    }
}

/// The gold operations for `fact` given the memories retrieved for it, as `(alias, text)`.
///
/// A pure function of its inputs, so it can be asked about any memory, including one a policy
/// wrote. Memories are matched by text: a memory is about the fact when it names the subject
/// and a value or keyword of the attribute; it stores the fact when the value it states as
/// current (before "previously") is the fact's value.
///
/// - a value already stored: nothing (NOOP), and other memories about the same attribute,
///   which can only be stale, are deleted;
/// - a new or changed value: UPDATE of the first matching memory to "Alice lives in Lyon,
///   previously Paris" (DELETE of further matches), or ADD when nothing matches;
/// - a removal: DELETE of every matching memory (NOOP when nothing matches).
pub fn oracle_operations(fact: &Fact, memories: &[(String, String)]) -> Vec<OracleOp> {
    let about: Vec<&(String, String)> = memories.iter().filter(|(_, text)| is_about(fact, text)).collect();
    let delete = |m: &&(String, String)| OracleOp::Delete { alias: m.0.clone() };
    if fact.change == Change::Remove {
        return about.iter().map(delete).collect();
    }
    let value = words(&fact.value);
    let stores = |text: &str| {
        let c = current_part(text);
        !value.is_empty() && c.windows(value.len()).any(|w| w == value.as_slice())
    };
    if let Some(kept) = about.iter().position(|(_, text)| stores(text)) {
        return about
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != kept)
            .map(|(_, m)| delete(m))
            .collect();
    }
    let attribute = Attribute::from_name(&fact.attribute);
    match about.split_first() {
        None => vec![OracleOp::Add {
            text: state_text(fact, fact.previous.as_deref()),
        }],
        Some((first, rest)) => {
            let previous = fact
                .previous
                .as_deref()
                .or_else(|| stated_value(attribute, &first.1));
            let mut ops = vec![OracleOp::Update {
                alias: first.0.clone(),
                text: state_text(fact, previous),
            }];
            ops.extend(rest.iter().map(delete));
            ops
        }
    }
}

/// Error rates of the imitation teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherConfig {
    /// Probability of writing ADD (a duplicate) where an UPDATE was right.
    pub add_instead_of_update: f64,
    /// Probability of leaving out the DELETEs where memories had to go.
    pub miss_delete: f64,
    /// Probability of leaving a gold fact out of the extraction.
    pub drop_fact: f64,
    /// Probability of ADDing a duplicate where nothing (NOOP) was right.
    pub add_duplicate: f64,
}

impl Default for TeacherConfig {
    /// An imperfect teacher, so that imitation leaves something for RL to learn.
    fn default() -> Self {
        Self {
            add_instead_of_update: 0.2,
            miss_delete: 0.2,
            drop_fact: 0.1,
            add_duplicate: 0.1,
        }
    }
}

impl TeacherConfig {
    /// A teacher that makes no mistakes (the oracle upper bound).
    pub fn perfect() -> Self {
        Self {
            add_instead_of_update: 0.0,
            miss_delete: 0.0,
            drop_fact: 0.0,
            add_duplicate: 0.0,
        }
    }

    /// Checks that every rate is a probability.
    pub fn validate(&self) -> Result<(), SimError> {
        for (name, p) in [
            ("add_instead_of_update", self.add_instead_of_update),
            ("miss_delete", self.miss_delete),
            ("drop_fact", self.drop_fact),
            ("add_duplicate", self.add_duplicate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(SimError::Config(format!("teacher {name} = {p} is not in [0, 1]")));
            }
        }
        Ok(())
    }
}

/// A seeded teacher that extracts facts and writes operations with configurable mistakes.
#[derive(Debug, Clone)]
pub struct Teacher {
    cfg: TeacherConfig,
    rng: ChaCha8Rng,
}

impl Teacher {
    /// A teacher with the given error rates; the same seed gives the same mistakes.
    pub fn new(cfg: TeacherConfig, seed: u64) -> Self {
        Self {
            cfg,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The teacher's configuration.
    pub fn config(&self) -> &TeacherConfig {
        &self.cfg
    }

    /// The gold facts of a chunk, each dropped with probability `drop_fact`.
    pub fn facts(&mut self, episode: &Episode, chunk: &[Turn]) -> Vec<Fact> {
        let mut out = Vec::new();
        for f in facts_in_chunk(episode, chunk) {
            if !self.chance(self.cfg.drop_fact) {
                out.push(f.clone());
            }
        }
        out
    }

    /// The gold operations of [`oracle_operations`], with the configured mistakes.
    pub fn operations(&mut self, fact: &Fact, memories: &[(String, String)]) -> Vec<OracleOp> {
        let gold = oracle_operations(fact, memories);
        if gold.is_empty() {
            if fact.change != Change::Remove && self.chance(self.cfg.add_duplicate) {
                return vec![OracleOp::Add {
                    text: fact.text.clone(),
                }];
            }
            return gold;
        }
        let has_update = gold.iter().any(|o| matches!(o, OracleOp::Update { .. }));
        let has_delete = gold.iter().any(|o| matches!(o, OracleOp::Delete { .. }));
        let add_instead = has_update && self.chance(self.cfg.add_instead_of_update);
        let miss_delete = has_delete && self.chance(self.cfg.miss_delete);
        gold.into_iter()
            .filter_map(|op| match op {
                OracleOp::Update { text, .. } if add_instead => Some(OracleOp::Add { text }),
                OracleOp::Delete { .. } if miss_delete => None,
                op => Some(op),
            })
            .collect()
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::DiaId;

    fn fact(change: Change, attribute: &str, value: &str, previous: Option<&str>) -> Fact {
        let a = Attribute::from_name(attribute).unwrap();
        Fact {
            speaker: "Alice".into(),
            dia_id: DiaId::new(1, 1),
            text: a.fact_sentence(change, "Alice", value),
            subject: "Alice".into(),
            attribute: attribute.into(),
            value: value.into(),
            change,
            previous: previous.map(Into::into),
        }
    }

    fn mem(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(a, t)| (a.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn new_value_is_added() {
        let ops = oracle_operations(&fact(Change::New, "city", "Paris", None), &[]);
        assert_eq!(
            ops,
            vec![OracleOp::Add {
                text: "Alice lives in Paris".into()
            }]
        );
        let other = mem(&[("m1", "Ben lives in Paris"), ("m2", "Alice works as a chef")]);
        let ops = oracle_operations(&fact(Change::New, "city", "Paris", None), &other);
        assert_eq!(
            ops,
            vec![OracleOp::Add {
                text: "Alice lives in Paris".into()
            }]
        );
    }

    #[test]
    fn changed_value_updates_the_matching_memory() {
        let m = mem(&[("m1", "Alice works as a chef"), ("m2", "Alice lives in Paris")]);
        let ops = oracle_operations(&fact(Change::Update, "city", "Lyon", Some("Paris")), &m);
        assert_eq!(
            ops,
            vec![OracleOp::Update {
                alias: "m2".into(),
                text: "Alice lives in Lyon, previously Paris".into()
            }]
        );
        // A memory a policy wrote in its own words still matches.
        let m = mem(&[("m7", "alice's home city: paris")]);
        let ops = oracle_operations(&fact(Change::Update, "city", "Lyon", Some("Paris")), &m);
        assert!(matches!(&ops[..], [OracleOp::Update { alias, .. }] if alias == "m7"));
    }

    #[test]
    fn stored_value_is_a_noop_and_stale_duplicates_go() {
        let m = mem(&[("m1", "Alice lives in Lyon, previously Paris")]);
        assert!(oracle_operations(&fact(Change::Restate, "city", "Lyon", Some("Lyon")), &m).is_empty());
        assert!(oracle_operations(&fact(Change::Update, "city", "Lyon", Some("Paris")), &m).is_empty());
        let m = mem(&[("m1", "Alice lives in Paris"), ("m2", "Alice moved to Lyon")]);
        let ops = oracle_operations(&fact(Change::Update, "city", "Lyon", Some("Paris")), &m);
        assert_eq!(ops, vec![OracleOp::Delete { alias: "m1".into() }]);
    }

    #[test]
    fn removal_deletes_every_match() {
        let m = mem(&[
            ("m1", "Alice has a dog as a pet"),
            ("m2", "Alice got a dog"),
            ("m3", "Ben has a cat"),
        ]);
        let ops = oracle_operations(&fact(Change::Remove, "pet", "dog", Some("dog")), &m);
        assert_eq!(
            ops,
            vec![
                OracleOp::Delete { alias: "m1".into() },
                OracleOp::Delete { alias: "m2".into() }
            ]
        );
        assert!(oracle_operations(&fact(Change::Remove, "pet", "dog", Some("dog")), &[]).is_empty());
    }

    #[test]
    fn previous_falls_back_to_the_memory() {
        let m = mem(&[("m1", "Alice works as a nurse")]);
        let ops = oracle_operations(&fact(Change::New, "job", "chef", None), &m);
        assert_eq!(
            ops,
            vec![OracleOp::Update {
                alias: "m1".into(),
                text: "Alice works as a chef, previously nurse".into()
            }]
        );
    }

    #[test]
    fn ops_serialize_as_the_manager_writes_them() {
        let op = OracleOp::Update {
            alias: "m3".into(),
            text: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&op).unwrap(),
            r#"{"operation":"UPDATE","id":"m3","text":"x"}"#
        );
    }

    #[test]
    fn imperfect_teacher_makes_mistakes_and_perfect_does_not() {
        let m = mem(&[("m1", "Alice lives in Paris")]);
        let f = fact(Change::Update, "city", "Lyon", Some("Paris"));
        let gold = oracle_operations(&f, &m);
        let mut perfect = Teacher::new(TeacherConfig::perfect(), 1);
        assert!((0..100).all(|_| perfect.operations(&f, &m) == gold));
        let cfg = TeacherConfig {
            add_instead_of_update: 0.5,
            ..TeacherConfig::default()
        };
        let mut t = Teacher::new(cfg.clone(), 1);
        let adds = (0..200)
            .filter(|_| matches!(t.operations(&f, &m)[..], [OracleOp::Add { .. }]))
            .count();
        assert!((60..140).contains(&adds), "{adds}");
        let mut a = Teacher::new(cfg.clone(), 9);
        let mut b = Teacher::new(cfg, 9);
        assert!((0..50).all(|_| a.operations(&f, &m) == b.operations(&f, &m)));
        assert!(
            TeacherConfig {
                drop_fact: 1.5,
                ..TeacherConfig::default()
            }
            .validate()
            .is_err()
        );
    }
}
