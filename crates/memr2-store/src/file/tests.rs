//! Tests of the file format: round trips, and rejection of damaged or foreign files.

use std::fs;

use proptest::prelude::*;

use super::*;
use crate::store::tests::{apply_all, ops_strategy};

fn sample_store() -> Store {
    let mut store = Store::new();
    store
        .apply(
            Operation::Add {
                text: "Alice lives in Paris".into(),
                speaker: Some("Alice".into()),
            },
            1,
        )
        .unwrap();
    store
        .apply(
            Operation::Add {
                text: "Bob has a dog".into(),
                speaker: None,
            },
            1,
        )
        .unwrap();
    let mut branch = store.snapshot().branch();
    branch
        .apply(
            Operation::Update {
                id: MemoryId::new(1),
                text: "Alice moved to Lyon".into(),
            },
            2,
        )
        .unwrap();
    branch.apply(Operation::Noop, 2).unwrap();
    let mut deeper = branch.branch();
    deeper
        .apply(Operation::Delete { id: MemoryId::new(2) }, 3)
        .unwrap();
    deeper.branch()
}

#[test]
fn save_then_load_round_trips_with_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.bin");
    let store = sample_store();
    store.save(&path).unwrap();
    let loaded = Store::load(&path).unwrap();
    assert_eq!(loaded, store);
    assert_eq!(loaded.generation(), 3);
    assert_eq!(loaded.history(MemoryId::new(1)).len(), 2);
    // Saving over an existing file replaces it and leaves no temporary file behind.
    let mut changed = loaded.clone();
    changed
        .apply(
            Operation::Add {
                text: "Carol likes tea".into(),
                speaker: None,
            },
            4,
        )
        .unwrap();
    changed.save(&path).unwrap();
    assert_eq!(Store::load(&path).unwrap(), changed);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["memory.bin"]);
}

#[test]
fn bodies_that_grow_when_decoded_still_load() {
    // The decoder's limit counts every integer at its full width, whatever its encoded length:
    // a NOOP is two bytes in the file and eight to the limit, an index posting two bytes and
    // eight. A limit of the body's own size refused such bodies.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noops.bin");
    let mut store = Store::new();
    for _ in 0..20_000 {
        store.apply(Operation::Noop, 1).unwrap();
    }
    store
        .apply(
            Operation::Add {
                text: "a b c d e f g h i j k l m n o p".into(),
                speaker: None,
            },
            1,
        )
        .unwrap();
    store.save(&path).unwrap();
    assert_eq!(Store::load(&path).unwrap(), store);
}

#[test]
fn damaged_and_foreign_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.bin");
    sample_store().save(&path).unwrap();
    let good = fs::read(&path).unwrap();
    let write = |bytes: &[u8]| {
        let p = dir.path().join("damaged.bin");
        fs::write(&p, bytes).unwrap();
        Store::load(&p)
    };

    assert!(matches!(
        write(b"{\"not\": \"a store\"}"),
        Err(StoreError::NotAStoreFile { .. })
    ));
    assert!(matches!(write(&good[..5]), Err(StoreError::Truncated { .. })));
    assert!(matches!(
        write(&good[..HEADER_LEN + 3]),
        Err(StoreError::Truncated { .. })
    ));
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(write(&longer), Err(StoreError::Corrupt { .. })));
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x40;
    assert!(matches!(write(&flipped), Err(StoreError::Corrupt { .. })));
    let mut future = good.clone();
    future[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let err = write(&future).unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedVersion { found, .. } if found == FORMAT_VERSION + 1));
    assert!(
        err.to_string()
            .contains("version 3, this build reads versions 1 to 2"),
        "{err}"
    );
    let mut ancient = good.clone();
    ancient[8..12].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        write(&ancient),
        Err(StoreError::UnsupportedVersion { found: 0, .. })
    ));
    // A forged length far beyond the file is refused before anything is allocated.
    let mut huge = good.clone();
    huge[12..20].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
    assert!(matches!(write(&huge), Err(StoreError::Truncated { .. })));
    let missing = Store::load(&dir.path().join("missing.bin")).unwrap_err();
    assert!(matches!(&missing, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound));
    assert!(missing.to_string().contains("missing.bin"));
}

/// A file of `version` around `body`, with a correct header and checksum.
fn file_bytes(version: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// The body of `state` as version 1 wrote it: no index section.
fn version_1_body(state: &State) -> Vec<u8> {
    #[derive(Serialize)]
    struct BodyV1Ref<'a> {
        config: &'a StoreConfig,
        lineage: Vec<u64>,
        log: Vec<(u32, OperationRef<'a>)>,
    }
    let v1 = BodyV1Ref {
        config: &state.config,
        lineage: state.lineage().iter().map(|p| p.log_len).collect(),
        log: log_refs(state),
    };
    bincode::serde::encode_to_vec(&v1, bincode::config::standard()).unwrap()
}

#[test]
fn version_1_files_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.bin");
    let store = sample_store();
    fs::write(&path, file_bytes(1, &version_1_body(store.state()))).unwrap();
    let loaded = Store::load(&path).unwrap();
    assert_eq!(loaded, store);
    assert_eq!(loaded.lineage(), store.lineage());
    assert_eq!(loaded.history(MemoryId::new(1)), store.history(MemoryId::new(1)));
    // Saving it again writes the current version.
    loaded.save(&path).unwrap();
    assert_eq!(fs::read(&path).unwrap()[8..12], FORMAT_VERSION.to_le_bytes());
    assert_eq!(Store::load(&path).unwrap(), store);
}

#[test]
fn a_checksummed_body_with_a_bad_log_is_inconsistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forged.bin");
    let body = BodyRef {
        config: &StoreConfig::default(),
        lineage: vec![],
        log: vec![(1, OperationRef::Delete { id: MemoryId::new(4) })],
        index: IndexSection::default(),
    };
    let body = bincode::serde::encode_to_vec(&body, bincode::config::standard()).unwrap();
    fs::write(&path, file_bytes(FORMAT_VERSION, &body)).unwrap();
    let err = Store::load(&path).unwrap_err();
    assert!(matches!(&err, StoreError::Inconsistent { seq: 0, source, .. }
        if matches!(**source, StoreError::UnknownId(_))));
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn a_checksummed_body_with_a_bad_index_section_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forged.bin");
    // Nine memories (the ninth ADD compacts them into the base under test settings), then an
    // UPDATE of the first and a tenth ADD (both in the delta; the first's slot is removed).
    let mut store = Store::new();
    for i in 0..9 {
        let text = format!("fact {i} likes tea");
        store.apply(Operation::Add { text, speaker: None }, 1).unwrap();
    }
    let update = Operation::Update {
        id: MemoryId::new(1),
        text: "fresh words here".into(),
    };
    store.apply(update, 2).unwrap();
    let add = Operation::Add {
        text: "tea again".into(),
        speaker: None,
    };
    store.apply(add, 2).unwrap();
    type Forgery = dyn Fn(&mut IndexSection);
    let good = store.state().index_section();
    assert_eq!((good.base_ids.len(), good.removed.as_slice()), (9, &[0][..]));
    assert_eq!(good.delta_docs, [(1, 3), (9, 2)]);
    let forge = |change: &Forgery| {
        let mut index = good.clone();
        change(&mut index);
        let body = BodyRef {
            config: &store.state().config,
            lineage: vec![],
            log: log_refs(store.state()),
            index,
        };
        let body = bincode::serde::encode_to_vec(&body, bincode::config::standard()).unwrap();
        fs::write(&path, file_bytes(FORMAT_VERSION, &body)).unwrap();
        Store::load(&path)
    };
    assert_eq!(forge(&|_| {}).unwrap(), store);
    let cases: [(&str, &Forgery); 13] = [
        ("base ids not increasing", &|i| i.base_ids[1] = 0),
        ("removed slot 9", &|i| i.removed[0] = 9),
        ("terms", &|i| {
            i.term_docs.extend(std::iter::repeat_n(0, i.terms.len()))
        }),
        ("postings listed", &|i| i.term_docs[0] += 1),
        ("bad posting", &|i| i.postings[0].1 = 0),
        ("bad posting", &|i| i.postings[0].0 = 9),
        ("listed twice", &|i| i.terms[1] = i.terms[0].clone()),
        ("listed twice", &|i| {
            let last = i.terms.len() - 1;
            i.terms[last] = i.terms[0].clone();
        }),
        ("terms listed by the delta", &|i| i.delta_docs[0].1 += 1),
        ("bad term", &|i| i.delta_terms[0].1 = 0),
        ("disagree on memory m1", &|i| i.removed.clear()),
        ("disagree on memory m10", &|i| i.delta_docs[1].0 += 1),
        ("disagree on memory m9", &|i| *i.base_ids.last_mut().unwrap() += 1),
    ];
    for (expected, change) in cases {
        match forge(change) {
            Err(StoreError::Corrupt { reason, .. }) => assert!(reason.contains(expected), "{reason}"),
            other => panic!("{expected}: {other:?}"),
        }
    }
}

#[test]
fn saving_to_a_missing_folder_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::new()
        .save(&dir.path().join("no/such/folder/memory.bin"))
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn save_then_load_gives_an_equal_store(prefix in ops_strategy(40), rest in ops_strategy(20), branch in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.bin");
        let mut store = Store::new();
        apply_all(&mut store, &prefix);
        if branch {
            store = store.snapshot().branch();
        }
        apply_all(&mut store, &rest);
        store.save(&path).unwrap();
        let loaded = Store::load(&path).unwrap();
        prop_assert!(loaded == store);
        prop_assert_eq!(loaded.lineage(), store.lineage());
        // A version 1 file of the same store (no index section) loads equal too.
        fs::write(&path, file_bytes(1, &version_1_body(store.state()))).unwrap();
        prop_assert!(Store::load(&path).unwrap() == store);
    }

    #[test]
    fn flipped_or_truncated_files_are_rejected(
        ops in ops_strategy(30),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.bin");
        let mut store = Store::new();
        apply_all(&mut store, &ops);
        store.save(&path).unwrap();
        let good = fs::read(&path).unwrap();

        let mut flipped = good.clone();
        for (at, mask) in &flips {
            flipped[at.index(good.len())] ^= mask;
        }
        if flipped != good {
            fs::write(&path, &flipped).unwrap();
            prop_assert!(Store::load(&path).is_err());
        }
        let truncated = &good[..cut.index(good.len())];
        fs::write(&path, truncated).unwrap();
        prop_assert!(Store::load(&path).is_err());
    }
}
