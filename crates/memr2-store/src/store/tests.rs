//! Tests of the store: operations, branching, history, search, tokens, threads.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::retrieval::RRF_K;
use crate::tokens::WhitespaceCounter;

fn add(text: &str) -> Operation {
    Operation::Add {
        text: text.to_owned(),
        speaker: None,
    }
}

fn id(n: u64) -> MemoryId {
    MemoryId::new(n)
}

fn texts(store: &Store) -> Vec<(u64, String)> {
    store.entries().map(|e| (e.id.get(), e.text.clone())).collect()
}

#[test]
fn operations_change_entries_and_record_provenance() {
    let mut store = Store::new();
    assert_eq!(
        store.apply(add("Alice lives in Paris"), 1).unwrap(),
        Applied::Added(id(1))
    );
    assert_eq!(
        store
            .apply(
                Operation::Add {
                    text: "Bob has a dog".into(),
                    speaker: Some("Bob".into())
                },
                1
            )
            .unwrap(),
        Applied::Added(id(2))
    );
    assert_eq!(
        store
            .apply(
                Operation::Update {
                    id: id(1),
                    text: "Alice moved to Lyon".into()
                },
                3
            )
            .unwrap(),
        Applied::Updated(id(1))
    );
    assert_eq!(store.apply(Operation::Noop, 3).unwrap(), Applied::Noop);
    let alice = store.get(id(1)).unwrap();
    assert_eq!(alice.text, "Alice moved to Lyon");
    assert_eq!((alice.created_session, alice.updated_session), (1, 3));
    assert_eq!(
        alice.provenance,
        Provenance {
            kind: OpKind::Update,
            seq: 2,
            generation: 0
        }
    );
    assert_eq!(store.get(id(2)).unwrap().speaker.as_deref(), Some("Bob"));
    assert_eq!(
        store.apply(Operation::Delete { id: id(2) }, 4).unwrap(),
        Applied::Deleted(id(2))
    );
    assert_eq!(store.len(), 1);
    assert_eq!(store.token_count(), 4);
    assert_eq!(store.operation_count(), 5);
    let kinds: Vec<OpKind> = store.operations().map(|r| r.applied.kind()).collect();
    assert_eq!(
        kinds,
        [
            OpKind::Add,
            OpKind::Add,
            OpKind::Update,
            OpKind::Noop,
            OpKind::Delete
        ]
    );
    // Ids are never reused, even after a delete.
    assert_eq!(store.apply(add("Carol runs"), 5).unwrap(), Applied::Added(id(3)));
}

#[test]
fn invalid_operations_leave_the_store_unchanged() {
    let mut store = Store::with_config(StoreConfig {
        max_text_chars: 10,
        ..StoreConfig::default()
    });
    store.apply(add("short"), 1).unwrap();
    store.apply(Operation::Delete { id: id(1) }, 1).unwrap();
    store.apply(add("kept"), 1).unwrap();
    let before = store.clone();
    let cases = [
        (add(""), "EmptyText"),
        (add(" \t\n"), "EmptyText"),
        (add("eleven char"), "TextTooLong"),
        (
            Operation::Update {
                id: id(1),
                text: "deleted".into(),
            },
            "UnknownId",
        ),
        (
            Operation::Update {
                id: id(9),
                text: "".into(),
            },
            "UnknownId",
        ),
        (
            Operation::Update {
                id: id(2),
                text: "".into(),
            },
            "EmptyText",
        ),
        (
            Operation::Update {
                id: id(2),
                text: "ééééééééééé".into(),
            },
            "TextTooLong",
        ),
        (Operation::Delete { id: id(1) }, "UnknownId"),
        (Operation::Delete { id: id(7) }, "UnknownId"),
    ];
    for (op, expected) in cases {
        let err = store.apply(op.clone(), 2).unwrap_err();
        assert!(format!("{err:?}").starts_with(expected), "{op:?} gave {err:?}");
        assert_eq!(store, before, "{op:?} changed the store");
    }
    // Ten multi-byte characters are within a limit of ten characters.
    store
        .apply(
            Operation::Update {
                id: id(2),
                text: "éééééééééé".into(),
            },
            2,
        )
        .unwrap();
}

#[test]
fn history_follows_a_memory_across_branches() {
    let mut root = Store::new();
    root.apply(add("Alice lives in Paris"), 1).unwrap();
    root.apply(add("Bob has a dog"), 1).unwrap();
    let after_session_1 = root.snapshot();
    let mut a = after_session_1.branch();
    let mut b = after_session_1.branch();
    a.apply(
        Operation::Update {
            id: id(1),
            text: "Alice moved to Lyon".into(),
        },
        2,
    )
    .unwrap();
    let mut a2 = a.branch();
    a2.apply(Operation::Delete { id: id(1) }, 3).unwrap();
    b.apply(Operation::Delete { id: id(1) }, 2).unwrap();

    let events = |s: &Store| -> Vec<(OpKind, u32, u32)> {
        s.history(id(1))
            .iter()
            .map(|h| (h.event, h.session, h.generation))
            .collect()
    };
    assert_eq!(events(&root), [(OpKind::Add, 1, 0)]);
    assert_eq!(events(&a), [(OpKind::Add, 1, 0), (OpKind::Update, 2, 1)]);
    assert_eq!(
        events(&a2),
        [
            (OpKind::Add, 1, 0),
            (OpKind::Update, 2, 1),
            (OpKind::Delete, 3, 2)
        ]
    );
    assert_eq!(events(&b), [(OpKind::Add, 1, 0), (OpKind::Delete, 2, 1)]);
    let update = &a2.history(id(1))[1];
    assert_eq!(update.old_text.as_deref(), Some("Alice lives in Paris"));
    assert_eq!(update.new_text.as_deref(), Some("Alice moved to Lyon"));
    assert_eq!(
        a2.history(id(1))[2].old_text.as_deref(),
        Some("Alice moved to Lyon")
    );
    assert!(a2.history(id(99)).is_empty());

    assert_eq!(root.lineage(), []);
    assert_eq!(
        a.lineage(),
        [BranchPoint {
            generation: 0,
            log_len: 2
        }]
    );
    assert_eq!(
        a2.lineage(),
        [
            BranchPoint {
                generation: 0,
                log_len: 2
            },
            BranchPoint {
                generation: 1,
                log_len: 3
            }
        ]
    );
    assert_eq!(
        a2.parent(),
        Some(BranchPoint {
            generation: 1,
            log_len: 3
        })
    );
    assert_eq!(a2.generation(), 2);
    assert_eq!(after_session_1.generation(), 0);
    assert_eq!(root.operation_count(), 2);
}

#[test]
fn search_respects_k_and_threshold() {
    let mut store = Store::new();
    for text in [
        "Alice lives in Paris",
        "Alice works as a chef in Paris",
        "Bob has a dog named Rex",
        "Carol likes tea",
        "Paris is rainy in spring",
    ] {
        store.apply(add(text), 1).unwrap();
    }
    let all = store.search("Alice Paris", 10, 0.0);
    let ids: Vec<u64> = all.iter().map(|h| h.id.get()).collect();
    assert_eq!(ids, [1, 2, 5]);
    assert!(all.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(store.search("Alice Paris", 2, 0.0).len(), 2);
    assert!(store.search("Alice Paris", 0, 0.0).is_empty());
    let threshold = all[1].score;
    let above: Vec<Hit> = store.search("Alice Paris", 10, threshold);
    assert_eq!(above.len(), 2, "the threshold is inclusive");
    assert!(store.search("Alice Paris", 10, all[0].score + 1.0).is_empty());
    assert!(store.search("unrelated words", 10, 0.0).is_empty());
    assert!(store.search("", 10, 0.0).is_empty());

    store.apply(Operation::Delete { id: id(1) }, 2).unwrap();
    store
        .apply(
            Operation::Update {
                id: id(4),
                text: "Carol visited Paris".into(),
            },
            2,
        )
        .unwrap();
    let ids: Vec<u64> = store
        .search("alice paris", 10, 0.0)
        .iter()
        .map(|h| h.id.get())
        .collect();
    assert_eq!(ids.first(), Some(&2));
    assert!(ids.contains(&4) && !ids.contains(&1));
}

#[test]
fn equal_scores_are_ordered_by_id() {
    let mut store = Store::new();
    for _ in 0..5 {
        store.apply(add("same text"), 1).unwrap();
    }
    let ids: Vec<u64> = store.search("text", 3, 0.0).iter().map(|h| h.id.get()).collect();
    assert_eq!(ids, [1, 2, 3]);
}

struct CharCounter;

impl TokenCounter for CharCounter {
    fn count(&self, text: &str) -> usize {
        text.chars().count()
    }
}

#[test]
fn token_counts_follow_changes() {
    let mut store = Store::new();
    store.apply(add("one two three"), 1).unwrap();
    store.apply(add("four  five"), 1).unwrap();
    assert_eq!(store.token_count(), 5);
    assert_eq!(store.size_tokens(&WhitespaceCounter), 5);
    assert_eq!(store.size_tokens(&CharCounter), 13 + 10);
    store
        .apply(
            Operation::Update {
                id: id(1),
                text: "one".into(),
            },
            2,
        )
        .unwrap();
    store.apply(Operation::Delete { id: id(2) }, 2).unwrap();
    assert_eq!(store.token_count(), 1);
    assert_eq!(store.size_tokens(&CharCounter), 3);
}

/// Embeds a text as counts of the letters a, b, c.
struct LetterEmbedder;

impl Embedder for LetterEmbedder {
    fn dim(&self) -> usize {
        3
    }

    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        Ok(['a', 'b', 'c']
            .iter()
            .map(|l| text.chars().filter(|c| c == l).count() as f32)
            .collect())
    }
}

struct BrokenEmbedder;

impl Embedder for BrokenEmbedder {
    fn dim(&self) -> usize {
        2
    }

    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        if text.contains("down") {
            Err("the service is down".to_string())
        } else if text.contains("nan") {
            Ok(vec![f32::NAN, 0.0])
        } else {
            Ok(vec![1.0, 0.0])
        }
    }
}

#[test]
fn dense_search_uses_the_attached_embedder() {
    let mut store = Store::new();
    store.apply(add("aaa"), 1).unwrap();
    assert!(matches!(
        store.search_dense(&[1.0, 0.0, 0.0], 1, 0.0),
        Err(StoreError::NoEmbedder)
    ));
    store.set_embedder(Arc::new(LetterEmbedder)).unwrap();
    store.apply(add("bbb"), 1).unwrap();
    store.apply(add("ab"), 1).unwrap();
    let branch = store.branch();
    store.apply(Operation::Delete { id: id(3) }, 2).unwrap();

    let hits = branch.search_dense(&[1.0, 0.0, 0.0], 3, 0.5).unwrap();
    let ids: Vec<u64> = hits.iter().map(|h| h.id.get()).collect();
    assert_eq!(ids, [1, 3]);
    assert!((hits[0].score - 1.0).abs() < 1e-6);
    assert!((hits[1].score - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    let ids: Vec<u64> = store
        .search_dense_text("a", 3, 0.5)
        .unwrap()
        .iter()
        .map(|h| h.id.get())
        .collect();
    assert_eq!(ids, [1]);
    assert!(matches!(
        store.search_dense(&[1.0], 1, 0.0),
        Err(StoreError::InvalidEmbedding { got: 1, expected: 3 })
    ));

    let mut broken = Store::new();
    broken.set_embedder(Arc::new(BrokenEmbedder)).unwrap();
    broken.apply(add("fine"), 1).unwrap();
    let before = broken.clone();
    assert!(matches!(
        broken.apply(add("nan"), 1),
        Err(StoreError::InvalidEmbedding { .. })
    ));
    assert!(matches!(
        broken.apply(add("the service is down"), 1),
        Err(StoreError::Embedder { .. })
    ));
    assert!(matches!(
        broken.search_dense_text("down", 1, 0.0),
        Err(StoreError::Embedder { .. })
    ));
    assert_eq!(broken, before);
    assert_eq!(broken.operation_count(), 1);
}

#[test]
fn retrieve_answers_by_each_index_and_by_both() {
    let min = MinScores {
        bm25: 0.0,
        dense: 0.1,
    };
    let mut store = Store::new();
    for text in ["aaa lyon", "bbb paris", "ccc lyon", "ab rome"] {
        store.apply(add(text), 1).unwrap();
    }
    let ids = |hits: Vec<Hit>| hits.iter().map(|h| h.id.get()).collect::<Vec<u64>>();
    assert_eq!(
        store.retrieve("lyon b", 3, Retrieval::Bm25, min).unwrap(),
        store.search("lyon b", 3, 0.0)
    );
    for mode in [Retrieval::Dense, Retrieval::Hybrid] {
        assert!(matches!(
            store.retrieve("lyon", 3, mode, min),
            Err(StoreError::NoEmbedder)
        ));
    }
    store.set_embedder(Arc::new(LetterEmbedder)).unwrap();
    // BM25 finds the two memories in Lyon; the letters find "bbb paris", then "ab rome".
    assert_eq!(
        ids(store.retrieve("lyon b", 2, Retrieval::Bm25, min).unwrap()),
        [1, 3]
    );
    assert_eq!(
        ids(store.retrieve("lyon b", 2, Retrieval::Dense, min).unwrap()),
        [2, 4]
    );
    let fused = store.retrieve("lyon b", 2, Retrieval::Hybrid, min).unwrap();
    let expected = fuse_for_test(
        &store.search("lyon b", 2, 0.0),
        &store.search_dense_text("lyon b", 2, 0.1).unwrap(),
    );
    assert_eq!(ids(fused.clone()), ids(expected));
    assert!((fused[0].score - 1.0 / (RRF_K + 1.0)).abs() < 1e-7);
    // Each list keeps its threshold: nothing is cosine-similar enough to "zzz".
    assert!(
        store
            .retrieve("zzz", 3, Retrieval::Dense, min)
            .unwrap()
            .is_empty()
    );
}

/// Reciprocal rank fusion written out for two lists.
fn fuse_for_test(a: &[Hit], b: &[Hit]) -> Vec<Hit> {
    let mut scores: Vec<(u64, f32)> = Vec::new();
    for list in [a, b] {
        for (rank, hit) in list.iter().enumerate() {
            let add = 1.0 / (RRF_K + rank as f32 + 1.0);
            match scores.iter_mut().find(|(id, _)| *id == hit.id.get()) {
                Some(s) => s.1 += add,
                None => scores.push((hit.id.get(), add)),
            }
        }
    }
    scores.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
    scores
        .into_iter()
        .take(2)
        .map(|(i, score)| Hit { id: id(i), score })
        .collect()
}

#[test]
fn stores_and_snapshots_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Store>();
    send_sync::<Snapshot>();
    send_sync::<Entry>();
    send_sync::<Hit>();
    send_sync::<OperationRecord>();
    send_sync::<StoreError>();
}

#[test]
fn threads_use_branches_of_one_snapshot_at_once() {
    let mut store = Store::new();
    for i in 0..200 {
        store
            .apply(add(&format!("fact number {i} about topic {}", i % 7)), 1)
            .unwrap();
    }
    let snapshot = store.snapshot();
    let results: Vec<Store> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let snapshot = &snapshot;
                scope.spawn(move || {
                    let mut branch = snapshot.branch();
                    for i in 0..50 {
                        let target = id(1 + (t * 50 + i) % 200);
                        branch
                            .apply(
                                Operation::Update {
                                    id: target,
                                    text: format!("thread {t} wrote {i}"),
                                },
                                2,
                            )
                            .unwrap();
                        branch.apply(add(&format!("thread {t} added {i}")), 2).unwrap();
                        assert!(!branch.search(&format!("thread {t}"), 5, 0.0).is_empty());
                    }
                    branch
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(snapshot.len(), 200);
    assert!(snapshot.search("thread", 5, 0.0).is_empty());
    for (t, branch) in results.iter().enumerate() {
        assert_eq!(branch.len(), 250);
        let foreign = branch
            .entries()
            .filter(|e| e.text.starts_with("thread") && !e.text.contains(&t.to_string()));
        assert_eq!(foreign.count(), 0, "thread {t} saw another thread's writes");
    }
}

// ---- Property tests ----

/// Entry of the reference model: a plain vector ordered by id.
#[derive(Debug, Clone, PartialEq)]
struct ModelEntry {
    id: u64,
    text: String,
    speaker: Option<String>,
    created: u32,
    updated: u32,
}

/// The obvious implementation the store must agree with.
#[derive(Debug, Clone, Default)]
struct Model {
    entries: Vec<ModelEntry>,
    next_id: u64,
    max_chars: usize,
}

impl Model {
    fn new(max_chars: usize) -> Self {
        Self {
            entries: Vec::new(),
            next_id: 1,
            max_chars,
        }
    }

    fn check(&self, text: &str) -> Result<(), String> {
        if text.trim().is_empty() {
            Err("EmptyText".into())
        } else if text.chars().count() > self.max_chars {
            Err("TextTooLong".into())
        } else {
            Ok(())
        }
    }

    fn position(&self, id: MemoryId) -> Result<usize, String> {
        self.entries
            .iter()
            .position(|e| e.id == id.get())
            .ok_or_else(|| format!("UnknownId({id})"))
    }

    fn apply(&mut self, op: &Operation, session: u32) -> Result<Applied, String> {
        match op {
            Operation::Add { text, speaker } => {
                self.check(text)?;
                let id = self.next_id;
                self.next_id += 1;
                self.entries.push(ModelEntry {
                    id,
                    text: text.clone(),
                    speaker: speaker.clone(),
                    created: session,
                    updated: session,
                });
                Ok(Applied::Added(MemoryId::new(id)))
            }
            Operation::Update { id, text } => {
                let at = self.position(*id)?;
                self.check(text)?;
                self.entries[at].text = text.clone();
                self.entries[at].updated = session;
                Ok(Applied::Updated(*id))
            }
            Operation::Delete { id } => {
                let at = self.position(*id)?;
                self.entries.remove(at);
                Ok(Applied::Deleted(*id))
            }
            Operation::Noop => Ok(Applied::Noop),
        }
    }
}

fn store_entries(store: &Store) -> Vec<ModelEntry> {
    store
        .entries()
        .map(|e| ModelEntry {
            id: e.id.get(),
            text: e.text.clone(),
            speaker: e.speaker.clone(),
            created: e.created_session,
            updated: e.updated_session,
        })
        .collect()
}

fn error_name(err: &StoreError) -> String {
    match err {
        StoreError::UnknownId(id) => format!("UnknownId({id})"),
        StoreError::EmptyText => "EmptyText".into(),
        StoreError::TextTooLong { .. } => "TextTooLong".into(),
        other => format!("{other:?}"),
    }
}

const TEST_MAX_CHARS: usize = 40;

fn test_config() -> StoreConfig {
    StoreConfig {
        max_text_chars: TEST_MAX_CHARS,
        ..StoreConfig::default()
    }
}

pub(crate) fn text_strategy() -> impl Strategy<Value = String> {
    let words = prop::sample::select(vec![
        "alice", "bob", "Paris", "lyon", "dog", "cat", "chef", "tea", "moved", "to", "the", "likes", "x1",
        "Über", "2023",
    ]);
    prop_oneof![
        8 => prop::collection::vec(words, 1..7).prop_map(|w| w.join(" ")),
        1 => Just(String::new()),
        1 => Just("  \t ".to_owned()),
        1 => "[a-z ]{41,60}",
        1 => "[a-zA-Z0-9,.!? ]{1,40}",
    ]
}

pub(crate) fn op_strategy() -> impl Strategy<Value = Operation> {
    let id = (0u64..24).prop_map(MemoryId::new);
    prop_oneof![
        4 => (text_strategy(), prop::option::of(prop::sample::select(vec!["Alice", "Bob"])))
            .prop_map(|(text, speaker)| Operation::Add { text, speaker: speaker.map(str::to_owned) }),
        3 => (id.clone(), text_strategy()).prop_map(|(id, text)| Operation::Update { id, text }),
        2 => id.prop_map(|id| Operation::Delete { id }),
        1 => Just(Operation::Noop),
    ]
}

pub(crate) fn ops_strategy(max: usize) -> impl Strategy<Value = Vec<(Operation, u32)>> {
    prop::collection::vec((op_strategy(), 0u32..8), 0..max)
}

/// Applies `ops`, ignoring errors.
pub(crate) fn apply_all(store: &mut Store, ops: &[(Operation, u32)]) {
    for (op, session) in ops {
        let _ = store.apply(op.clone(), *session);
    }
}

fn rebuilt_bm25(store: &Store) -> Bm25Index {
    let mut index = Bm25Index::default();
    for entry in store.entries() {
        index.insert(entry.id, &entry.text);
    }
    index
}

proptest! {
    #[test]
    fn store_agrees_with_a_vector_model(ops in ops_strategy(60)) {
        let mut store = Store::with_config(test_config());
        let mut model = Model::new(TEST_MAX_CHARS);
        let mut applied_ops = 0;
        for (op, session) in &ops {
            let expected = model.apply(op, *session);
            let before = store.clone();
            let got = store.apply(op.clone(), *session).map_err(|e| error_name(&e));
            prop_assert_eq!(&got, &expected, "op {:?}", op);
            if got.is_err() {
                prop_assert!(store == before, "a failed operation changed the store");
            } else {
                applied_ops += 1;
            }
            prop_assert_eq!(store_entries(&store), model.entries.clone());
            prop_assert_eq!(store.len(), model.entries.len());
            let words: usize = model.entries.iter().map(|e| e.text.split_whitespace().count()).sum();
            prop_assert_eq!(store.token_count(), words);
        }
        prop_assert_eq!(store.operation_count(), applied_ops);
        prop_assert_eq!(store.next_id(), MemoryId::new(model.next_id));
    }

    #[test]
    fn branches_never_touch_parent_or_sibling(
        prefix in ops_strategy(30),
        left in ops_strategy(30),
        right in ops_strategy(30),
    ) {
        let mut parent = Store::with_config(test_config());
        apply_all(&mut parent, &prefix);
        let frozen = texts(&parent);
        let snapshot = parent.snapshot();
        let mut a = snapshot.branch();
        let mut b = snapshot.branch();
        apply_all(&mut a, &left);
        apply_all(&mut b, &right);

        // Each branch equals the same operations applied to a deep copy of the parent.
        let mut expected_a = Store::with_config(test_config());
        apply_all(&mut expected_a, &prefix);
        expected_a.state.begin_branch();
        let mut expected_b = expected_a.clone();
        apply_all(&mut expected_a, &left);
        apply_all(&mut expected_b, &right);
        prop_assert!(a == expected_a);
        prop_assert!(b == expected_b);

        prop_assert_eq!(texts(&parent), frozen.clone());
        prop_assert_eq!(snapshot.entries().map(|e| (e.id.get(), e.text.clone())).collect::<Vec<_>>(), frozen);
        prop_assert_eq!(snapshot.operation_count(), parent.operation_count());
        prop_assert!(parent.snapshot() == snapshot);
    }

    #[test]
    fn incremental_bm25_equals_a_rebuild(ops in ops_strategy(80), query in text_strategy()) {
        let mut store = Store::with_config(test_config());
        apply_all(&mut store, &ops);
        let rebuilt = rebuilt_bm25(&store);
        prop_assert_eq!(&store.state.bm25, &rebuilt);
        let expected = rebuilt.search(store.config().bm25, &query, 5, 0.0);
        prop_assert_eq!(store.search(&query, 5, 0.0), expected);
    }

    #[test]
    fn search_agrees_with_brute_force_ranking(ops in ops_strategy(60), query in text_strategy(), k in 0usize..6) {
        let mut store = Store::with_config(test_config());
        apply_all(&mut store, &ops);
        let hits = store.search(&query, k, 0.0);
        // Scores of every matching entry, computed one document at a time.
        let all = store.search(&query, usize::MAX, f32::NEG_INFINITY);
        let query_terms: std::collections::BTreeSet<String> = crate::tokenize(&query).into_iter().collect();
        let matching: BTreeMap<u64, ()> = store
            .entries()
            .filter(|e| crate::tokenize(&e.text).iter().any(|t| query_terms.contains(t)))
            .map(|e| (e.id.get(), ()))
            .collect();
        prop_assert_eq!(all.len(), matching.len());
        prop_assert_eq!(&hits[..], &all[..k.min(all.len())]);
        prop_assert!(all.windows(2).all(|w| w[0].score > w[1].score
            || (w[0].score == w[1].score && w[0].id < w[1].id)));
    }
}
