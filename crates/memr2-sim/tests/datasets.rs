//! Dataset files: format detection, the LongMemEval and JSON Lines loaders on fixtures, their
//! splits and capabilities, writing and reading back, and clear errors for malformed files.

use std::path::{Path, PathBuf};

use memr2_sim::dataset::split_by_id;
use memr2_sim::{
    Capabilities, Category, DataFormat, DiaId, Environment, EpisodeFile, Locomo, LongMemEval, SimError,
    Split, SyntheticWorld, WorldConfig, detect_format, load_dataset, stats,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

/// A path in the temporary folder, unique to this process and test.
fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("memr2-sim-{}-{name}", std::process::id()))
}

const NO_FACTS_WITH_CATEGORIES: Capabilities = Capabilities {
    gold_facts: false,
    categories: true,
};

fn ids(env: &dyn Environment, split: Split) -> Vec<String> {
    env.episodes(split).into_iter().map(|e| e.id).collect()
}

#[test]
fn each_format_is_detected_and_loaded_by_content() {
    for (file, format) in [
        ("locomo_mini.json", DataFormat::Locomo),
        ("longmemeval_mini.json", DataFormat::LongMemEval),
        ("episodes_mini.jsonl", DataFormat::Episodes),
    ] {
        assert_eq!(detect_format(&read(file)), Some(format), "{file}");
        let env = load_dataset(&fixture(file)).unwrap();
        let name = env.name();
        assert!(
            name.starts_with(&format!("{} (", format.name())) && name.ends_with(&format!("{file})")),
            "{name}"
        );
    }
    let locomo = load_dataset(&fixture("locomo_mini.json")).unwrap();
    let direct = Locomo::load(fixture("locomo_mini.json")).unwrap();
    for split in Split::ALL {
        assert_eq!(locomo.episodes(split), direct.episodes(split));
    }
    assert_eq!(locomo.capabilities(), NO_FACTS_WITH_CATEGORIES);
}

#[test]
fn unknown_or_missing_files_are_clear_errors() {
    let path = scratch("unknown.json");
    std::fs::write(&path, r#"[{"title": "not a dataset"}]"#).unwrap();
    let err = load_dataset(&path).err().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(matches!(err, SimError::Schema { .. }));
    let message = err.to_string();
    assert!(message.starts_with(&path.display().to_string()), "{message}");
    for format in ["LoCoMo", "LongMemEval", "memr2 episodes"] {
        assert!(message.contains(format), "{message}");
    }

    let err = load_dataset(Path::new("/nonexistent/data.jsonl")).err().unwrap();
    assert!(matches!(err, SimError::Io { .. }));
    assert_eq!(err.to_string(), "cannot read /nonexistent/data.jsonl");
}

#[test]
fn longmemeval_fixture_becomes_one_episode_per_question() {
    let data = LongMemEval::load(fixture("longmemeval_mini.json")).unwrap();
    let s = stats(data.all_episodes());
    assert_eq!((s.conversations, s.sessions, s.turns, s.questions), (3, 6, 12, 3));
    assert_eq!(data.capabilities(), NO_FACTS_WITH_CATEGORIES);

    let [single, temporal, abstention] = data.all_episodes() else {
        panic!("three episodes")
    };
    assert_eq!(single.id, "e47becba");
    assert_eq!(single.speakers, ["User", "Assistant"]);
    assert_eq!(single.sessions[1].date, "2023/05/21 (Sun) 09:10");
    assert_eq!(single.sessions[1].turns[0].speaker, "User");
    assert_eq!(single.sessions[1].turns[1].speaker, "Assistant");
    assert_eq!(single.sessions[1].turns[2].dia_id, DiaId::new(2, 3));
    let q = &single.questions[0];
    assert_eq!(q.category, Category::SingleHop);
    assert_eq!(q.answer, "Business Administration");
    assert_eq!(q.evidence, [DiaId::new(2, 1)], "the turn marked has_answer");

    let q = &temporal.questions[0];
    assert_eq!(q.category, Category::Temporal);
    assert_eq!(q.answer, "14", "a number answer becomes its text");
    let dates: Vec<&str> = temporal.sessions.iter().map(|s| s.date.as_str()).collect();
    assert_eq!(
        dates,
        [
            "2023/03/01 (Wed) 12:00",
            "2023/03/15 (Wed) 18:00",
            "2023/03/20 (Mon) 08:30"
        ],
        "sessions in date order"
    );
    assert!(temporal.sessions[0].turns[0].text.contains("first time"));
    assert_eq!(
        q.evidence,
        [
            DiaId::new(1, 1),
            DiaId::new(1, 2),
            DiaId::new(2, 1),
            DiaId::new(2, 2)
        ],
        "no turn marked: every turn of the answer sessions"
    );

    let q = &abstention.questions[0];
    assert_eq!(q.category, Category::Unanswerable);
    assert!(
        q.answer.starts_with("You did not mention"),
        "gold answer as written"
    );
    assert_eq!(q.evidence, [DiaId::new(1, 1)]);
}

#[test]
fn longmemeval_splits_follow_the_question_id_hash() {
    let data = LongMemEval::load(fixture("longmemeval_mini.json")).unwrap();
    assert_eq!(ids(&data, Split::Train), ["7161e7e2_abs"]);
    assert_eq!(ids(&data, Split::Validation), ["gpt4_2655b836"]);
    assert_eq!(ids(&data, Split::Test), ["e47becba"]);
    for e in data.all_episodes() {
        assert_eq!(LongMemEval::split_of(&e.id), split_by_id(&e.id));
    }
}

#[test]
fn jsonl_fixture_reads_with_defaults_and_splits() {
    let data = EpisodeFile::load(fixture("episodes_mini.jsonl")).unwrap();
    let s = stats(&data.entries().iter().map(|(_, e)| e.clone()).collect::<Vec<_>>());
    assert_eq!(
        (s.conversations, s.sessions, s.turns, s.questions, s.facts),
        (3, 4, 6, 5, 1)
    );
    assert_eq!(
        data.capabilities(),
        NO_FACTS_WITH_CATEGORIES,
        "trip-1 and trip-2 have no facts; some questions have categories"
    );
    assert_eq!(ids(&data, Split::Test), ["trip-1"], "the split as written");
    assert_eq!(ids(&data, Split::Validation), ["pets-1"]);
    assert_eq!(split_by_id("trip-2"), Split::Train);
    assert_eq!(ids(&data, Split::Train), ["trip-2"], "no split: by the id's hash");

    let trip2 = &data.entries()[1].1;
    assert_eq!(
        trip2.questions[0].category,
        Category::SingleHop,
        "default category"
    );
    assert!(trip2.questions[1].evidence.is_empty(), "default evidence");
    assert!(trip2.facts.is_empty());
    let pets = &data.entries()[2].1;
    assert_eq!(pets.facts[0].dia_id, DiaId::new(1, 1));
    assert_eq!(pets.facts[0].previous, None);
}

#[test]
fn jsonl_capabilities_follow_the_content() {
    let text = read("episodes_mini.jsonl");
    let pets: Vec<&str> = text.lines().filter(|l| l.contains("pets-1")).collect();
    let only_facts = EpisodeFile::from_jsonl_str(&pets.join("\n"), "pets.jsonl").unwrap();
    assert_eq!(
        only_facts.capabilities(),
        Capabilities {
            gold_facts: true,
            categories: true
        }
    );
    let trip2: Vec<&str> = text.lines().filter(|l| l.contains("trip-2")).collect();
    let plain = EpisodeFile::from_jsonl_str(&trip2.join("\n"), "trip.jsonl").unwrap();
    assert_eq!(plain.capabilities(), Capabilities::default());
    let empty = EpisodeFile::from_jsonl_str("\n\n", "empty.jsonl").unwrap();
    assert_eq!(empty.capabilities(), Capabilities::default());
    assert!(empty.entries().is_empty());
}

#[test]
fn jsonl_round_trips_through_write() {
    let data = EpisodeFile::load(fixture("episodes_mini.jsonl")).unwrap();
    let path = scratch("round-trip.jsonl");
    EpisodeFile::write(&path, data.entries().iter().map(|(s, e)| (*s, e))).unwrap();
    let back = EpisodeFile::load(&path).unwrap();
    assert_eq!(back.entries(), data.entries());
    assert_eq!(back.capabilities(), data.capabilities());

    let world = SyntheticWorld::new(WorldConfig::smoke(), 3).unwrap();
    let written = EpisodeFile::write_environment(&path, &world).unwrap();
    assert_eq!(written, 8);
    let back = load_dataset(&path).unwrap();
    assert_eq!(back.capabilities(), world.capabilities());
    for split in Split::ALL {
        assert_eq!(back.episodes(split), world.episodes(split), "{split}");
    }

    let longmemeval = LongMemEval::load(fixture("longmemeval_mini.json")).unwrap();
    EpisodeFile::write_environment(&path, &longmemeval).unwrap();
    let back = EpisodeFile::load(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(back.capabilities(), NO_FACTS_WITH_CATEGORIES);
    for split in Split::ALL {
        assert_eq!(back.episodes(split), longmemeval.episodes(split), "{split}");
    }

    let err = EpisodeFile::write(
        "/nonexistent/dir/out.jsonl",
        data.entries().iter().map(|(s, e)| (*s, e)),
    )
    .unwrap_err();
    assert!(matches!(err, SimError::Write { .. }));
    assert_eq!(err.to_string(), "cannot write /nonexistent/dir/out.jsonl");
}

/// The fixture's first line with `from` replaced by `to` (once).
fn first_line_with(from: &str, to: &str) -> String {
    let text = read("episodes_mini.jsonl");
    let line = text.lines().next().unwrap();
    assert!(line.contains(from), "{from}");
    line.replacen(from, to, 1)
}

fn jsonl_error(text: &str) -> String {
    let err = EpisodeFile::from_jsonl_str(text, "bad.jsonl").unwrap_err();
    assert!(matches!(err, SimError::Schema { .. }), "{err:?}");
    err.to_string()
}

#[test]
fn malformed_jsonl_errors_name_file_line_episode_and_field() {
    let missing = first_line_with(r#""speakers": ["Ana", "Ben"], "#, "");
    assert_eq!(
        jsonl_error(&missing),
        "bad.jsonl: line 1 (episode trip-1): missing field \"speakers\""
    );

    let wrong_type = format!("\n{}", first_line_with(r#""index": 2"#, r#""index": "2""#));
    let message = jsonl_error(&wrong_type);
    assert!(
        message.starts_with(
            "bad.jsonl: line 2 (episode trip-1): field \"sessions[1].index\": invalid type: string \"2\""
        ),
        "{message}"
    );

    let text = read("episodes_mini.jsonl");
    let truncated = &text[..text.len() - 40];
    let message = jsonl_error(truncated);
    assert!(
        message.starts_with(
            "bad.jsonl: line 4: not valid JSON (malformed or truncated line): EOF while parsing"
        ),
        "{message}"
    );

    let evidence = first_line_with(r#""evidence": ["D1:1"]"#, r#""evidence": ["D1:7"]"#);
    assert_eq!(
        jsonl_error(&evidence),
        "bad.jsonl: line 1: episode trip-1, question 0: evidence D1:7 of \"Where does Ana live?\" \
         names no turn of the episode"
    );

    let out_of_place = first_line_with(r#""index": 2"#, r#""index": 3"#);
    assert_eq!(
        jsonl_error(&out_of_place),
        "bad.jsonl: line 1: episode trip-1: session 2 has index 3"
    );

    let turn = first_line_with(r#""dia_id": "D1:2""#, r#""dia_id": "D1:3""#);
    assert_eq!(
        jsonl_error(&turn),
        "bad.jsonl: line 1: episode trip-1: turn 2 of session 1 has id D1:3, expected D1:2"
    );

    let bad_id = first_line_with(r#""dia_id": "D1:2""#, r#""dia_id": "1:2""#);
    let message = jsonl_error(&bad_id);
    assert!(
        message.contains("field \"sessions[0].turns[1].dia_id\": invalid dialogue id \"1:2\""),
        "{message}"
    );

    let category = first_line_with(r#""category": "single_hop""#, r#""category": "easy""#);
    let message = jsonl_error(&category);
    assert!(
        message.contains("field \"questions[0].category\": unknown variant `easy`"),
        "{message}"
    );

    let typo = first_line_with(r#""evidence""#, r#""evidance""#);
    let message = jsonl_error(&typo);
    assert!(
        message.contains("unknown field \"questions[0].evidance\", expected one of"),
        "{message}"
    );

    let split = first_line_with(r#""split": "test""#, r#""split": "dev""#);
    let message = jsonl_error(&split);
    assert!(
        message.contains("field \"split\": unknown variant `dev`"),
        "{message}"
    );

    let line = text.lines().next().unwrap();
    let twice = format!("{line}\n\n{line}");
    assert_eq!(
        jsonl_error(&twice),
        "bad.jsonl: line 3 (episode trip-1): id \"trip-1\" repeats line 1"
    );

    assert_eq!(
        jsonl_error("[1, 2]"),
        "bad.jsonl: line 1: expected an object, found an array"
    );
}

fn longmemeval_error(text: &str) -> String {
    let err = LongMemEval::from_json_str(text, "lme.json").unwrap_err();
    assert!(matches!(err, SimError::Schema { .. }), "{err:?}");
    err.to_string()
}

#[test]
fn malformed_longmemeval_errors_name_file_record_and_field() {
    let text = read("longmemeval_mini.json");

    let missing = text.replacen(
        r#""question": "How many days passed between my first and second visits to the museum?","#,
        "",
        1,
    );
    assert_eq!(
        longmemeval_error(&missing),
        "lme.json: record 1 (gpt4_2655b836): missing field \"question\""
    );

    let wrong_type = text.replacen(
        r#""haystack_dates": ["2023/05/01 (Mon) 17:45"]"#,
        r#""haystack_dates": [20230501]"#,
        1,
    );
    let message = longmemeval_error(&wrong_type);
    assert!(
        message.starts_with(
            "lme.json: record 2 (7161e7e2_abs): field \"haystack_dates\": invalid type: integer"
        ),
        "{message}"
    );

    let role = text.replacen(r#""role": "assistant""#, r#""role": "system""#, 1);
    assert_eq!(
        longmemeval_error(&role),
        "lme.json: record 0 (e47becba): field \"haystack_sessions[0][1].role\": unknown role \"system\", \
         expected user or assistant"
    );

    let kind = text.replacen("temporal-reasoning", "temporal", 1);
    let message = longmemeval_error(&kind);
    assert!(
        message.starts_with(
            "lme.json: record 1 (gpt4_2655b836): field \"question_type\": unknown type \"temporal\""
        ),
        "{message}"
    );

    let lengths = text.replacen(
        r#""haystack_session_ids": ["answer_u"]"#,
        r#""haystack_session_ids": []"#,
        1,
    );
    let message = longmemeval_error(&lengths);
    assert!(message.contains("must have the same length"), "{message}");

    let no_id = text.replacen(r#""question_id": "e47becba","#, "", 1);
    assert_eq!(
        longmemeval_error(&no_id),
        "lme.json: record 0: missing field \"question_id\""
    );

    let err = LongMemEval::from_json_str(&text[..text.len() / 2], "cut.json").unwrap_err();
    assert!(matches!(err, SimError::Json { .. }));
    assert!(err.to_string().contains("cut.json"), "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("EOF"), "{source}");

    assert_eq!(
        longmemeval_error(r#"{"question_id": "a"}"#),
        "lme.json: expected a JSON array of questions at the top level, found an object"
    );
}
