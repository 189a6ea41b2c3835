//! The LoCoMo loader on a hand-written fixture with every quirk, on broken files, and on the
//! real `locomo10.json` when it is present.

use std::path::{Path, PathBuf};

use memr2_sim::locomo::ADVERSARIAL_ANSWER;
use memr2_sim::{
    Capabilities, Category, DiaId, Environment, Locomo, SimError, Split, stats, validate_episode,
};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/locomo_mini.json")
}

#[test]
fn fixture_loads_with_every_quirk() {
    let data = Locomo::load(fixture()).unwrap();
    let s = stats(data.all_episodes());
    assert_eq!((s.conversations, s.sessions, s.turns), (3, 5, 11));
    assert_eq!(
        (s.questions, s.questions_non_adversarial),
        (11, 8),
        "conv-43 qa 2 names only a missing turn"
    );
    for e in data.all_episodes() {
        validate_episode(e).unwrap();
    }

    let conv26 = &data.all_episodes()[0];
    assert_eq!(conv26.id, "conv-26");
    assert_eq!(conv26.speakers, ["Caroline", "Melanie"]);
    assert_eq!(conv26.sessions[0].date, "1:56 pm on 8 May, 2023");
    assert!(
        conv26.sessions[0].turns[1]
            .text
            .ends_with("and shared a photo of a painting of a sunrise.")
    );
    let q = &conv26.questions;
    assert_eq!(q[1].answer, "2022", "integer answers become strings");
    assert_eq!(q[1].category, Category::Temporal);
    assert_eq!(q[2].category, Category::OpenDomain);
    assert!(q[2].evidence.is_empty());
    assert_eq!(q[3].evidence, vec![DiaId::new(1, 2), DiaId::new(2, 1)]);
    assert_eq!(q[3].category, Category::MultiHop);
    assert_eq!(q[4].category, Category::Adversarial);
    assert_eq!(q[4].answer, ADVERSARIAL_ANSWER);
    assert_eq!(q[5].answer, ADVERSARIAL_ANSWER);
    assert_eq!(q[6].evidence, vec![DiaId::new(1, 1)], "the bare \"D\" is dropped");
    assert_eq!(q[6].category, Category::SingleHop);

    let conv43 = &data.all_episodes()[1];
    assert_eq!(
        conv43.questions[0].evidence,
        vec![DiaId::new(1, 1), DiaId::new(2, 1)]
    );
    assert_eq!(conv43.questions[1].evidence, vec![DiaId::new(1, 2)]);
    assert_eq!(
        conv43.questions.len(),
        2,
        "qa 2 (evidence D2:9 only) and qa 3 dropped"
    );

    let skipped = data.skipped().join("\n");
    assert!(
        skipped.contains("session_3_date_time has no session"),
        "{skipped}"
    );
    assert!(skipped.contains("evidence \"D\" names no turn"), "{skipped}");
    assert!(
        skipped.contains("conv-43: qa 3 has no known category"),
        "{skipped}"
    );
    assert!(
        skipped.contains("conv-43: qa 2 dropped: its evidence D2:9 names no turn"),
        "{skipped}"
    );
    assert_eq!(data.skipped().len(), 4, "{skipped}");
    let notes = data.notes().join("\n");
    assert!(notes.contains("\"D:2:1\" read as D2:1"), "{notes}");
}

#[test]
fn fixture_splits_follow_the_paper_without_adversarial() {
    let data = Locomo::load(fixture()).unwrap();
    assert!(data.name().starts_with("locomo ("), "{}", data.name());
    assert!(data.name().ends_with("locomo_mini.json)"), "{}", data.name());
    assert_eq!(
        data.capabilities(),
        Capabilities {
            gold_facts: false,
            categories: true
        }
    );
    let train = data.episodes(Split::Train);
    let validation = data.episodes(Split::Validation);
    let test = data.episodes(Split::Test);
    assert_eq!(
        train.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["conv-43"]
    );
    assert_eq!(validation[0].id, "conv-44");
    assert_eq!(test[0].id, "conv-26");
    for e in train.iter().chain(&validation).chain(&test) {
        assert!(e.questions.iter().all(|q| q.category != Category::Adversarial));
        assert!(e.facts.is_empty());
    }
    assert_eq!(test[0].questions.len(), 5);
    let with = data.with_adversarial(true);
    assert_eq!(with.episodes(Split::Test)[0].questions.len(), 7);
}

#[test]
fn broken_files_are_clear_errors() {
    let text = std::fs::read_to_string(fixture()).unwrap();
    let truncated = &text[..text.len() / 2];
    let err = Locomo::from_json_str(truncated, "cut.json").unwrap_err();
    assert!(matches!(err, SimError::Json { .. }));
    let message = err.to_string();
    assert!(
        message.contains("cut.json") && message.contains("truncated"),
        "{message}"
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("EOF"), "{source}");

    let err = Locomo::from_json_str(r#"{"sample_id": "conv-1"}"#, "obj.json").unwrap_err();
    assert_eq!(
        err.to_string(),
        "obj.json: expected a JSON array of conversations at the top level"
    );

    let err = Locomo::from_json_str(r#"[{"sample_id": "conv-1", "qa": []}]"#, "x.json").unwrap_err();
    assert_eq!(err.to_string(), "x.json: conv-1 has no \"conversation\" object");

    let no_speaker = r#"[{"sample_id": "conv-1", "conversation": {"speaker_a": "A"}, "qa": []}]"#;
    let err = Locomo::from_json_str(no_speaker, "y.json").unwrap_err();
    assert_eq!(err.to_string(), "y.json: conv-1 has no string \"speaker_b\"");

    let err = Locomo::load("/nonexistent/locomo10.json").unwrap_err();
    assert!(matches!(err, SimError::Io { .. }));
    assert_eq!(err.to_string(), "cannot read /nonexistent/locomo10.json");
}

/// Runs on the real file when it is there (`$MEMR2_LOCOMO`, else the shared data folder).
#[test]
fn real_file_counts_when_present() {
    let path = std::env::var_os("MEMR2_LOCOMO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/data/locomo10.json"));
    if !path.exists() {
        println!(
            "note: {} not present; real LoCoMo counts not checked",
            path.display()
        );
        return;
    }
    let data = Locomo::load(&path).unwrap();
    let s = stats(data.all_episodes());
    assert_eq!(s.conversations, 10);
    assert_eq!(s.sessions, 272);
    assert_eq!(s.turns, 5_882);
    assert_eq!(s.questions, 1_986);
    assert_eq!(s.questions_non_adversarial, 1_540);
    let by_split = |split| {
        data.episodes(split)
            .iter()
            .map(|e| e.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(by_split(Split::Train), ["conv-43", "conv-47"]);
    assert_eq!(by_split(Split::Validation), ["conv-44"]);
    assert_eq!(by_split(Split::Test).len(), 7);
    let kept: usize = Split::ALL
        .iter()
        .map(|&sp| stats(&data.episodes(sp)).questions)
        .sum();
    assert_eq!(kept, 1_540);
    let skipped = data.skipped().join("\n");
    assert!(
        skipped.contains("conv-42: qa 58 evidence D10:19 names no turn of the conversation (dropped)"),
        "{skipped}"
    );
    assert!(
        skipped.contains("conv-47: qa 38 evidence D4:36 names no turn of the conversation (dropped)"),
        "{skipped}"
    );
    for e in data.all_episodes() {
        validate_episode(e).unwrap();
        for (i, session) in e.sessions.iter().enumerate() {
            for (k, t) in session.turns.iter().enumerate() {
                assert_eq!(t.dia_id, DiaId::new(session.index, k as u32 + 1));
            }
            assert!(!session.date.is_empty(), "{} session {i}", e.id);
        }
    }
    for line in data.skipped() {
        println!("skipped: {line}");
    }
}
