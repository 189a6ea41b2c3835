//! Properties of the synthetic world: determinism, horizons, sizes, and oracle replays.

use std::collections::BTreeSet;

use memr2_sim::attribute::PREVIOUSLY;
use memr2_sim::{
    Attribute, Capabilities, Category, Change, Environment, Episode, OracleOp, Split, SyntheticWorld,
    Teacher, TeacherConfig, UNKNOWN_ANSWER, WorldConfig, stats, validate_episode,
};
use proptest::prelude::*;

fn world(seed: u64) -> SyntheticWorld {
    SyntheticWorld::new(WorldConfig::default_cpu(), seed).unwrap()
}

/// A plain list memory that applies oracle operations.
#[derive(Default)]
struct ListMemory {
    entries: Vec<(String, String)>,
    next: usize,
}

impl ListMemory {
    fn apply(&mut self, ops: Vec<OracleOp>) {
        for op in ops {
            match op {
                OracleOp::Add { text } => {
                    self.next += 1;
                    self.entries.push((format!("m{}", self.next), text));
                }
                OracleOp::Update { alias, text } => {
                    let e = self
                        .entries
                        .iter_mut()
                        .find(|(a, _)| *a == alias)
                        .expect("alias shown");
                    e.1 = text;
                }
                OracleOp::Delete { alias } => self.entries.retain(|(a, _)| *a != alias),
            }
        }
    }
}

/// Runs a teacher over every chunk of every session, retrieving the whole memory each time.
fn replay(episode: &Episode, teacher: &mut Teacher, chunks: usize) -> ListMemory {
    replay_top_k(episode, teacher, chunks, usize::MAX)
}

/// Runs a teacher, showing it the `k` memories that best match the fact's text by a BM25-like
/// sum of the inverse document frequencies of shared words.
fn replay_top_k(episode: &Episode, teacher: &mut Teacher, chunks: usize, k: usize) -> ListMemory {
    let mut memory = ListMemory::default();
    for session in &episode.sessions {
        for chunk in session.chunks(chunks) {
            for fact in teacher.facts(episode, chunk) {
                let query: BTreeSet<String> = words(&fact.text).into_iter().collect();
                let docs: Vec<BTreeSet<String>> = memory
                    .entries
                    .iter()
                    .map(|m| words(&m.1).into_iter().collect())
                    .collect();
                let n = docs.len() as f64;
                let idf = |w: &String| {
                    let df = docs.iter().filter(|d| d.contains(w)).count() as f64;
                    ((n - df + 0.5) / (df + 0.5) + 1.0).ln()
                };
                let mut scored: Vec<(f64, &(String, String))> = docs
                    .iter()
                    .zip(&memory.entries)
                    .map(|(d, m)| (query.iter().filter(|w| d.contains(*w)).map(idf).sum::<f64>(), m))
                    .filter(|(score, _)| *score > 0.0)
                    .collect();
                scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                let shown: Vec<(String, String)> =
                    scored.into_iter().take(k).map(|(_, m)| m.clone()).collect();
                let ops = teacher.operations(&fact, &shown);
                memory.apply(ops);
            }
        }
    }
    memory
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn has(hay: &[String], needle: &str) -> bool {
    let n = words(needle);
    hay.windows(n.len()).any(|w| w == n.as_slice())
}

fn current(text: &str) -> Vec<String> {
    let w = words(text);
    let end = w.iter().position(|x| x == PREVIOUSLY).unwrap_or(w.len());
    w[..end].to_vec()
}

/// Memories naming `subject` and any value of `attribute`.
fn about<'a>(memory: &'a ListMemory, subject: &str, attribute: Attribute) -> Vec<&'a str> {
    memory
        .entries
        .iter()
        .map(|(_, t)| t.as_str())
        .filter(|t| {
            let w = words(t);
            has(&w, subject) && attribute.values().iter().any(|v| has(&w, v))
        })
        .collect()
}

/// Checks that a perfect replay's memory holds exactly the episode's final state.
fn check_perfect_memory(episode: &Episode) {
    check_perfect_memory_top_k(episode, usize::MAX);
}

fn check_perfect_memory_top_k(episode: &Episode, k: usize) {
    let mut teacher = Teacher::new(TeacherConfig::perfect(), 0);
    let memory = replay_top_k(episode, &mut teacher, 2, k);
    let slots: BTreeSet<(String, String)> = episode
        .facts
        .iter()
        .map(|f| (f.subject.clone(), f.attribute.clone()))
        .collect();
    for (subject, attribute) in &slots {
        let a = Attribute::from_name(attribute).unwrap();
        let history: Vec<_> = episode
            .facts
            .iter()
            .filter(|f| &f.subject == subject && &f.attribute == attribute && f.change != Change::Restate)
            .collect();
        let last = history.last().unwrap();
        let stored = about(&memory, subject, a);
        if last.change == Change::Remove {
            assert!(
                stored.is_empty(),
                "{}: {subject} {attribute} removed but {stored:?}",
                episode.id
            );
            continue;
        }
        assert_eq!(
            stored.len(),
            1,
            "{}: {subject} {attribute}: {stored:?}",
            episode.id
        );
        let now = current(stored[0]);
        assert!(
            has(&now, &last.value),
            "{}: {} lacks {}",
            episode.id,
            stored[0],
            last.value
        );
        for stale in history.iter().map(|f| &f.value).filter(|v| **v != last.value) {
            assert!(
                !has(&now, stale),
                "{}: {} states stale {stale} as current",
                episode.id,
                stored[0]
            );
        }
        if last.change == Change::Update {
            let before = last.previous.as_deref().unwrap();
            assert!(
                has(&words(stored[0]), before),
                "{}: {} lost {before}",
                episode.id,
                stored[0]
            );
        }
    }
    let text = memory
        .entries
        .iter()
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join(" | ");
    let all = words(&text);
    for q in &episode.questions {
        match q.category {
            Category::SingleHop | Category::Temporal | Category::MultiHop => {
                assert!(
                    has(&all, &q.answer),
                    "{}: {:?} -> {} not in {text}",
                    episode.id,
                    q.question,
                    q.answer
                )
            }
            Category::KnowledgeUpdate if q.answer != "yes" && q.answer != "no" => {
                assert!(
                    has(&all, &q.answer),
                    "{}: {:?} -> {} not in {text}",
                    episode.id,
                    q.question,
                    q.answer
                )
            }
            Category::Unanswerable => assert_eq!(q.answer, UNKNOWN_ANSWER),
            _ => {}
        }
    }
}

#[test]
fn same_seed_same_bytes_different_seed_different() {
    for split in Split::ALL {
        let a = serde_json::to_string(&world(7).episodes(split)).unwrap();
        let b = serde_json::to_string(&world(7).episodes(split)).unwrap();
        let c = serde_json::to_string(&world(8).episodes(split)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
    let w = world(7);
    assert_ne!(w.episode(Split::Train, 0), w.episode(Split::Test, 0));
    assert_ne!(w.episode(Split::Train, 0), w.episode(Split::Train, 1));
}

#[test]
fn growing_a_split_keeps_its_first_episodes() {
    let small = WorldConfig {
        train_episodes: 4,
        validation_episodes: 2,
        test_episodes: 3,
        ..WorldConfig::default_cpu()
    };
    let (small, large) = (SyntheticWorld::new(small, 7).unwrap(), world(7));
    for split in Split::ALL {
        let (a, b) = (small.episodes(split), large.episodes(split));
        assert!(b.len() > a.len(), "{split:?}: {} <= {}", b.len(), a.len());
        assert_eq!(a[..], b[..a.len()], "{split:?}");
    }
}

#[test]
fn default_world_is_small() {
    let w = world(1);
    let cfg = w.config();
    let episodes = w.episodes(Split::Train);
    assert_eq!(episodes.len(), cfg.train_episodes);
    let s = stats(&episodes);
    assert_eq!(s.sessions, 32 * episodes.len());
    let words_per_session = s.words as f64 / s.sessions as f64;
    assert!((20.0..60.0).contains(&words_per_session), "{words_per_session}");
    let questions = s.questions as f64 / s.conversations as f64;
    assert!((10.0..=20.0).contains(&questions), "{questions}");
    let mut vocabulary = BTreeSet::new();
    for e in &episodes {
        assert_eq!(e.speakers.len(), 2);
        for session in &e.sessions {
            assert!((cfg.min_turns..=cfg.max_turns).contains(&session.turns.len()));
            for t in &session.turns {
                let n = t.text.split_whitespace().count();
                assert!((3..=16).contains(&n), "{:?}", t.text);
                vocabulary.extend(words(&t.text));
            }
        }
        for f in &e.facts {
            assert!(f.text.split_whitespace().count() <= 20);
        }
        for q in &e.questions {
            vocabulary.extend(words(&q.question));
        }
    }
    assert!(vocabulary.len() < 600, "{} distinct words", vocabulary.len());
    let eight: Vec<_> = episodes.iter().map(|e| e.with_horizon(8)).collect();
    assert!(
        stats(&eight).questions >= 4 * episodes.len(),
        "horizon 8 keeps enough questions"
    );
}

#[test]
fn every_category_and_change_occurs() {
    let episodes = world(2).episodes(Split::Train);
    let cats: BTreeSet<Category> = episodes
        .iter()
        .flat_map(|e| e.questions.iter().map(|q| q.category))
        .collect();
    for c in Category::ALL {
        assert!(cats.contains(&c), "{c} missing");
    }
    let changes: BTreeSet<String> = episodes
        .iter()
        .flat_map(|e| e.facts.iter().map(|f| format!("{:?}", f.change)))
        .collect();
    assert_eq!(changes.len(), 4, "{changes:?}");
}

#[test]
fn every_episode_of_every_split_is_valid() {
    let w = world(0);
    assert_eq!(
        w.capabilities(),
        Capabilities {
            gold_facts: true,
            categories: true
        }
    );
    for split in Split::ALL {
        let episodes = w.episodes(split);
        assert_eq!(episodes.len(), WorldConfig::default_cpu().episodes_in(split));
        for e in &episodes {
            validate_episode(e).unwrap();
            validate_episode(&e.with_horizon(8)).unwrap();
        }
    }
}

#[test]
fn facts_are_tied_to_their_turns() {
    for e in world(3).episodes(Split::Validation) {
        let mut seen = 0;
        for s in &e.sessions {
            for chunk in s.chunks(3) {
                for f in memr2_sim::facts_in_chunk(&e, chunk) {
                    let turn = e.turn(f.dia_id).unwrap();
                    assert_eq!(turn.speaker, f.speaker);
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, e.facts.len());
        for q in &e.questions {
            for d in &q.evidence {
                assert!(e.turn(*d).is_some(), "{} evidence {d} names no turn", e.id);
            }
        }
    }
}

#[test]
fn perfect_replay_holds_the_final_state() {
    for e in world(4).episodes(Split::Test) {
        check_perfect_memory(&e);
        for h in [8, 16] {
            check_perfect_memory(&e.with_horizon(h));
        }
    }
    for e in SyntheticWorld::new(WorldConfig::smoke(), 4)
        .unwrap()
        .episodes(Split::Train)
    {
        check_perfect_memory(&e);
    }
}

#[test]
fn perfect_replay_with_lexical_top_3_retrieval() {
    // Fact sentences share their words with the memory they change, so a small lexical top-k
    // (as the store's BM25 index gives) suffices for the oracle.
    for e in world(6).episodes(Split::Train).iter().take(16) {
        check_perfect_memory_top_k(e, 3);
    }
}

#[test]
fn imperfect_teacher_leaves_errors() {
    let episodes = world(5).episodes(Split::Validation);
    let (mut perfect_size, mut imperfect_size, mut differ) = (0, 0, 0);
    for (i, e) in episodes.iter().enumerate() {
        let p = replay(e, &mut Teacher::new(TeacherConfig::perfect(), i as u64), 1);
        let q = replay(e, &mut Teacher::new(TeacherConfig::default(), i as u64), 1);
        perfect_size += p.entries.len();
        imperfect_size += q.entries.len();
        differ += usize::from(p.entries != q.entries);
    }
    assert_eq!(differ, episodes.len());
    assert!(
        imperfect_size > perfect_size,
        "{imperfect_size} <= {perfect_size}"
    );
}

#[test]
fn invalid_configs_are_rejected() {
    let bad = [
        WorldConfig {
            people: 1,
            ..WorldConfig::default_cpu()
        },
        WorldConfig {
            attributes: vec![],
            ..WorldConfig::default_cpu()
        },
        WorldConfig {
            attributes: vec![Attribute::City, Attribute::City],
            ..WorldConfig::default_cpu()
        },
        WorldConfig {
            min_turns: 7,
            ..WorldConfig::default_cpu()
        },
        WorldConfig {
            max_fact_turns: 4,
            ..WorldConfig::default_cpu()
        },
        WorldConfig {
            sessions: 0,
            ..WorldConfig::default_cpu()
        },
    ];
    for cfg in bad {
        let err = SyntheticWorld::new(cfg, 0).unwrap_err();
        assert!(err.to_string().starts_with("invalid configuration"), "{err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn horizon_keeps_exactly_the_questions_inside(seed in any::<u64>(), h in 1usize..=40) {
        let w = SyntheticWorld::new(WorldConfig::default_cpu(), seed).unwrap();
        let e = w.episode(Split::Train, 0);
        let cut = e.with_horizon(h);
        prop_assert!(validate_episode(&cut).is_ok());
        let last = h.min(e.sessions.len()) as u32;
        prop_assert_eq!(cut.sessions.len(), last as usize);
        for q in &cut.questions {
            prop_assert!(q.evidence.iter().all(|d| d.session <= last));
        }
        let expected = e.questions.iter().filter(|q| q.evidence.iter().all(|d| d.session <= last)).count();
        prop_assert_eq!(cut.questions.len(), expected);
        prop_assert!(cut.facts.iter().all(|f| f.dia_id.session <= last));
        let per_session: usize = (1..=last).map(|s| cut.questions_for_session(s).len()).sum();
        prop_assert_eq!(per_session, cut.questions.len());
        prop_assert_eq!(cut.questions_up_to(last).len(), cut.questions.len());
    }

    #[test]
    fn perfect_replay_answers_every_question(seed in any::<u64>(), h in prop::sample::select(vec![8usize, 16, 32])) {
        let w = SyntheticWorld::new(WorldConfig::default_cpu(), seed).unwrap();
        check_perfect_memory(&w.episode(Split::Train, 0).with_horizon(h));
    }
}
