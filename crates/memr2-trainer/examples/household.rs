//! A new environment with a task of its own, trained end to end through memr2's library API:
//! two housemates keep track of where their things are. Over short dated sessions they put
//! items (a drill, the passport, the spare keys, a ladder, ...) somewhere in the house, move
//! them, lend them to neighbours, use them up or throw them away, among chit-chat. The
//! environment gives gold facts per turn (so the supervised warm start and the oracle row
//! work) and asks where things are; its task, [`WhereIsIt`], gives half credit for a place
//! the item was at at another time, so that a stale memory earns less than a current one and
//! more than none.
//!
//! ```sh
//! cargo run --release -p memr2-trainer --example household -- --run-dir runs/household --seed 0
//! ```
//!
//! The whole run (warm start, answerer, two curriculum stages, evaluation) takes a few
//! minutes on two CPU cores.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, Flex};
use memr2_sim::{
    AnswerScore, Capabilities, Category, Change, DiaId, Environment, Episode, Fact, Probe, Question,
    QuestionAnswering, Request, Response, Session, Split, Task, Turn, UNKNOWN_ANSWER, bleu1, exact_match,
    normalize_answer, validate_episode,
};
use memr2_trainer::TrainConfig;
use memr2_trainer::config::{CurriculumConfig, DataSpec, EvalConfig, Keep};
use memr2_trainer::train::{self, Event, RunOptions};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type B = Autodiff<Flex>;

const USAGE: &str = "usage: household [--run-dir DIR] [--seed N]";

// ---------------------------------------------------------------------------------------------
// The household
// ---------------------------------------------------------------------------------------------

/// Something the housemates own.
struct Item {
    /// What it is called, without article ("drill", "spare keys").
    name: &'static str,
    /// Whether the name is plural ("the spare keys are ...").
    plural: bool,
    /// Whether it is used up rather than thrown away when it goes.
    consumable: bool,
}

impl Item {
    const fn thing(name: &'static str) -> Self {
        Self {
            name,
            plural: false,
            consumable: false,
        }
    }

    const fn things(name: &'static str) -> Self {
        Self {
            name,
            plural: true,
            consumable: false,
        }
    }

    const fn supply(name: &'static str, plural: bool) -> Self {
        Self {
            name,
            plural,
            consumable: true,
        }
    }

    fn is(&self) -> &'static str {
        if self.plural { "are" } else { "is" }
    }

    fn was(&self) -> &'static str {
        if self.plural { "were" } else { "was" }
    }

    fn it(&self) -> &'static str {
        if self.plural { "they" } else { "it" }
    }

    fn them(&self) -> &'static str {
        if self.plural { "them" } else { "it" }
    }
}

/// No item's name shares a word sequence with another's or with a place, so that a memory
/// names one item and one place unambiguously.
const ITEMS: &[Item] = &[
    Item::thing("drill"),
    Item::thing("passport"),
    Item::things("spare keys"),
    Item::thing("ladder"),
    Item::thing("camping stove"),
    Item::thing("tent"),
    Item::thing("toolbox"),
    Item::thing("sewing kit"),
    Item::thing("umbrella"),
    Item::thing("extension cord"),
    Item::thing("first aid kit"),
    Item::thing("torch"),
    Item::thing("suitcase"),
    Item::thing("bike pump"),
    Item::thing("hedge trimmer"),
    Item::supply("bag of charcoal", false),
    Item::supply("tin of paint", false),
    Item::supply("batteries", true),
];

const ROOMS: &[&str] = &[
    "garage",
    "shed",
    "attic",
    "basement",
    "hall cupboard",
    "kitchen drawer",
    "guest room",
    "car boot",
    "laundry room",
    "wardrobe",
];
const NEIGHBOURS: &[&str] = &["Tom", "Priya", "Mrs Novak"];
const CHIT_CHAT: &[&str] = &[
    "The weather was lovely this weekend.",
    "I am cooking pasta tonight, want some?",
    "Did you watch the match yesterday?",
    "Work has been busy this week.",
    "The plants on the balcony need water.",
    "I booked a dentist appointment for Friday.",
    "We are out of milk again.",
    "The heating makes a strange noise.",
    "I finished that book you lent me.",
    "Shall we order pizza on Saturday?",
];
const HOUSEMATES: &[&str] = &["Alice", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo"];

/// Where an item can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Somewhere in the house.
    Room(&'static str),
    /// Lent to a neighbour.
    Neighbour(&'static str),
}

impl Place {
    /// The place as an answer: "garage", "Tom's house".
    fn name(self) -> String {
        match self {
            Place::Room(r) => r.to_string(),
            Place::Neighbour(n) => format!("{n}'s house"),
        }
    }

    /// The place as a noun phrase: "the garage", "Tom's house".
    fn noun(self) -> String {
        match self {
            Place::Room(r) => format!("the {r}"),
            Place::Neighbour(_) => self.name(),
        }
    }

    /// Where something is: "in the garage", "at Tom's house".
    fn at(self) -> String {
        match self {
            Place::Room(r) => format!("in the {r}"),
            Place::Neighbour(_) => format!("at {}", self.name()),
        }
    }
}

/// Items an episode is about; the first [`EARLY_ITEMS`] only change in the first half of the
/// sessions, so that the shorter curriculum horizon has questions too.
const ITEMS_PER_EPISODE: usize = 6;
const EARLY_ITEMS: usize = 3;
/// Questions about items the conversation never mentions, per episode.
const UNANSWERABLE: usize = 2;
/// Most changes (placed, moved, lent, gone) of one item in an episode.
const MAX_CHANGES: usize = 3;
/// Probability that a move is a loan to a neighbour.
const LEND: f64 = 0.3;
/// Probability that the turn after a fact is the other housemate's reaction to it.
const REACTION: f64 = 0.6;
/// Probability that a chit-chat turn mentions an item or a room without saying where anything is.
const DECOY: f64 = 0.25;
/// The `attribute` of every gold fact.
const LOCATION: &str = "location";

/// One change of an item's place (or a restatement of it), stated by one turn.
#[derive(Debug, Clone)]
struct Move {
    dia_id: DiaId,
    item: usize,
    change: Change,
    /// The new place, or for a removal and a restatement the current one.
    place: Place,
    previous: Option<Place>,
}

/// What is known of one item while the timeline is built.
#[derive(Debug, Clone)]
struct Slot {
    item: usize,
    /// Last session in which the item may change.
    until: u32,
    place: Option<Place>,
    held: Vec<Place>,
    changes: usize,
    gone: bool,
    last_session: u32,
}

/// The household environment: every episode is a pure function of the seed, the split and its
/// index.
struct Household {
    seed: u64,
    sessions: u32,
    train: usize,
    validation: usize,
    test: usize,
}

impl Household {
    fn new(seed: u64) -> Self {
        Self {
            seed,
            sessions: 8,
            train: 24,
            validation: 6,
            test: 8,
        }
    }

    fn episode(&self, split: Split, index: usize) -> Episode {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let code: u64 = match split {
            Split::Train => 1,
            Split::Validation => 2,
            Split::Test => 3,
        };
        rng.set_stream((code << 40) | index as u64);
        generate(
            &mut rng,
            self.sessions,
            format!("household-{}-{index}", split.name()),
        )
    }
}

impl Environment for Household {
    fn name(&self) -> &str {
        "household"
    }

    fn episodes(&self, split: Split) -> Vec<Episode> {
        let n = match split {
            Split::Train => self.train,
            Split::Validation => self.validation,
            Split::Test => self.test,
        };
        (0..n).map(|i| self.episode(split, i)).collect()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            gold_facts: true,
            categories: true,
        }
    }

    fn task(&self) -> &dyn Task {
        &WhereIsIt
    }
}

/// Replaces each `{key}` of a template and capitalises the first letter.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (key, value) in values {
        out = out.replace(&format!("{{{key}}}"), value);
    }
    let mut chars = out.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => out,
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, options: &[&'a str]) -> &'a str {
    options.choose(rng).copied().unwrap_or_default()
}

/// "3 March 2024" for day `day` (from 0) of 2024.
fn date(day: u32) -> String {
    const MONTHS: [(&str, u32); 12] = [
        ("January", 31),
        ("February", 29),
        ("March", 31),
        ("April", 30),
        ("May", 31),
        ("June", 30),
        ("July", 31),
        ("August", 31),
        ("September", 30),
        ("October", 31),
        ("November", 30),
        ("December", 31),
    ];
    let mut rest = day % 366;
    for (month, length) in MONTHS {
        if rest < length {
            return format!("{} {month} 2024", rest + 1);
        }
        rest -= length;
    }
    "31 December 2024".into()
}

/// One episode: the items, the timeline of their moves, the sessions, the facts and questions.
fn generate(rng: &mut ChaCha8Rng, sessions: u32, id: String) -> Episode {
    let mut people: Vec<&str> = HOUSEMATES.to_vec();
    people.shuffle(rng);
    let speakers = [people[0], people[1]];
    let mut order: Vec<usize> = (0..ITEMS.len()).collect();
    order.shuffle(rng);
    let (present, absent) = order.split_at(ITEMS_PER_EPISODE);
    let mut slots: Vec<Slot> = present
        .iter()
        .enumerate()
        .map(|(i, &item)| Slot {
            item,
            until: if i < EARLY_ITEMS { sessions / 2 } else { sessions },
            place: None,
            held: Vec::new(),
            changes: 0,
            gone: false,
            last_session: 0,
        })
        .collect();

    let mut moves: Vec<Move> = Vec::new();
    let mut out_sessions = Vec::with_capacity(sessions as usize);
    let mut day = rng.random_range(0..120);
    for s in 1..=sessions {
        if s > 1 {
            day += rng.random_range(3..=14);
        }
        let n_turns: u32 = rng.random_range(4..=6);
        let n_facts: usize = rng.random_range(1..=2);
        let mut positions: Vec<u32> = (2..=n_turns).collect();
        positions.shuffle(rng);
        positions.truncate(n_facts);
        let offset = s % 2;
        let mut turns = Vec::with_capacity(n_turns as usize);
        let mut last_move: Option<Move> = None;
        for t in 1..=n_turns {
            let speaker = speakers[((t + offset) % 2) as usize];
            let other = speakers[((t + offset + 1) % 2) as usize];
            let dia_id = DiaId::new(s, t);
            let chosen = if positions.contains(&t) {
                next_move(rng, &mut slots, s, dia_id)
            } else {
                None
            };
            let text = match (&chosen, &last_move) {
                (Some(m), _) => move_text(rng, m),
                (None, _) if t == 1 => fill(
                    pick(
                        rng,
                        &[
                            "Hi {O}!",
                            "Morning {O}, got a minute?",
                            "Hey {O}, quick update on the house.",
                        ],
                    ),
                    &[("O", other)],
                ),
                (None, Some(m)) if rng.random_bool(REACTION) => fill(
                    pick(
                        rng,
                        &[
                            "Good to know, thanks.",
                            "OK, I will remember that.",
                            "Thanks for telling me.",
                            "Great, I was looking for the {item}.",
                            "Noted.",
                        ],
                    ),
                    &[("item", ITEMS[m.item].name)],
                ),
                (None, _) if rng.random_bool(DECOY) => {
                    let item = ITEMS[slots.choose(rng).map_or(0, |slot| slot.item)].name;
                    fill(
                        pick(
                            rng,
                            &[
                                "The {room} is such a mess, we should tidy it.",
                                "Do we still need the {item}?",
                                "{n} says hello, by the way.",
                                "I keep forgetting what we store in the {room}.",
                            ],
                        ),
                        &[
                            ("room", pick(rng, ROOMS)),
                            ("item", item),
                            ("n", pick(rng, NEIGHBOURS)),
                        ],
                    )
                }
                (None, _) => {
                    let said = turns.last().map_or("", |t: &Turn| t.text.as_str());
                    let fresh: Vec<&str> = CHIT_CHAT.iter().copied().filter(|c| *c != said).collect();
                    pick(rng, &fresh).to_string()
                }
            };
            turns.push(Turn {
                dia_id,
                speaker: speaker.to_string(),
                text,
            });
            last_move = chosen.clone();
            moves.extend(chosen);
        }
        out_sessions.push(Session {
            index: s,
            date: date(day),
            turns,
        });
    }

    let speaker_of = |d: DiaId| -> String {
        out_sessions
            .iter()
            .flat_map(|s| &s.turns)
            .find(|t| t.dia_id == d)
            .map_or_else(String::new, |t| t.speaker.clone())
    };
    let facts = moves.iter().map(|m| fact(m, speaker_of(m.dia_id))).collect();
    let questions = questions(rng, &moves, absent);
    Episode {
        id,
        speakers: speakers.iter().map(|s| s.to_string()).collect(),
        sessions: out_sessions,
        questions,
        facts,
    }
}

/// Chooses what a fact turn in session `s` says, and applies it to the slots.
fn next_move(rng: &mut ChaCha8Rng, slots: &mut [Slot], s: u32, dia_id: DiaId) -> Option<Move> {
    let mut candidates: Vec<(usize, Change, f64)> = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        if slot.gone || slot.until < s || slot.last_session == s {
            continue;
        }
        match slot.place {
            None => candidates.push((i, Change::New, 3.0)),
            Some(_) => {
                if slot.changes < MAX_CHANGES {
                    candidates.push((i, Change::Update, 1.0));
                    candidates.push((i, Change::Remove, 0.2));
                }
                candidates.push((i, Change::Restate, 0.35));
            }
        }
    }
    let total: f64 = candidates.iter().map(|c| c.2).sum();
    let mut r = rng.random::<f64>() * total;
    let &(i, change, _) = candidates.iter().find(|c| {
        let hit = r < c.2;
        r -= c.2;
        hit
    })?;
    let slot = &mut slots[i];
    let current = slot.place;
    let fresh_room = |rng: &mut ChaCha8Rng, held: &[Place]| {
        let rooms: Vec<Place> = ROOMS
            .iter()
            .map(|r| Place::Room(r))
            .filter(|p| !held.contains(p))
            .collect();
        rooms.choose(rng).copied()
    };
    let place = match (change, current) {
        (Change::New, _) => fresh_room(rng, &slot.held)?,
        (Change::Update, Some(Place::Room(_))) if rng.random_bool(LEND) => {
            let neighbours: Vec<Place> = NEIGHBOURS
                .iter()
                .map(|n| Place::Neighbour(n))
                .filter(|p| !slot.held.contains(p))
                .collect();
            neighbours.choose(rng).copied()?
        }
        (Change::Update, _) => fresh_room(rng, &slot.held)?,
        (Change::Remove | Change::Restate, current) => current?,
    };
    slot.last_session = s;
    match change {
        Change::New | Change::Update => {
            slot.place = Some(place);
            slot.held.push(place);
            slot.changes += 1;
        }
        Change::Remove => {
            slot.place = None;
            slot.gone = true;
            slot.changes += 1;
        }
        Change::Restate => {}
    }
    Some(Move {
        dia_id,
        item: slot.item,
        change,
        place,
        previous: current,
    })
}

/// The turn that states a move, in one of a few paraphrases.
fn move_text(rng: &mut ChaCha8Rng, m: &Move) -> String {
    let item = &ITEMS[m.item];
    let (at, noun) = (m.place.at(), m.place.noun());
    let (prev, prev_at) = m
        .previous
        .map_or((String::new(), String::new()), |p| (p.noun(), p.at()));
    let templates: &[&str] = match (m.change, m.place, m.previous) {
        (Change::New, _, _) => &[
            "I put the {item} {at}.",
            "The {item} {is} {at} now, in case you need {them}.",
            "Just so you know, I left the {item} {at}.",
        ],
        (Change::Update, Place::Neighbour(_), _) => &[
            "I lent the {item} to {n}, so {it} {is} {at}.",
            "{n} borrowed the {item}; {it} {is} {at} for now.",
        ],
        (Change::Update, _, Some(Place::Neighbour(_))) => &[
            "{pn} gave the {item} back and I put {them} {at}.",
            "The {item} came back from {prev}, {it} {is} {at} now.",
        ],
        (Change::Update, _, _) => &[
            "I moved the {item} from {prev} to {noun}.",
            "The {item} {is} {at} now, not {prev_at}.",
            "I took the {item} out of {prev} and put {them} {at}.",
        ],
        (Change::Restate, _, _) => &[
            "Remember, the {item} {is} still {at}.",
            "If you need the {item}, {it} {is} still {at}.",
        ],
        (Change::Remove, _, _) if item.consumable => &[
            "We used up the {item}, we need to buy more.",
            "The {item} {is} used up, I finished {them} yesterday.",
        ],
        (Change::Remove, _, _) => &[
            "I threw the old {item} away, {it} {was} broken.",
            "The {item} went to the tip, {it} {was} falling apart.",
        ],
    };
    let neighbour = |p: Option<Place>| match p {
        Some(Place::Neighbour(n)) => n,
        _ => "",
    };
    fill(
        pick(rng, templates),
        &[
            ("item", item.name),
            ("is", item.is()),
            ("was", item.was()),
            ("it", item.it()),
            ("them", item.them()),
            ("at", &at),
            ("noun", &noun),
            ("prev_at", &prev_at),
            ("prev", &prev),
            ("n", neighbour(Some(m.place))),
            ("pn", neighbour(m.previous)),
        ],
    )
}

/// The gold fact of a move. Its text is the memory a perfect manager keeps ("The drill is in
/// the shed"); the oracle appends ", previously garage" when it updates a memory, and matches
/// memories to facts by the item's name and its places.
fn fact(m: &Move, speaker: String) -> Fact {
    let item = &ITEMS[m.item];
    let text = match m.change {
        Change::Remove if item.consumable => format!("The {} {} used up", item.name, item.was()),
        Change::Remove => format!("The {} {} thrown away", item.name, item.was()),
        _ => format!("The {} {} {}", item.name, item.is(), m.place.at()),
    };
    Fact {
        speaker,
        dia_id: m.dia_id,
        text,
        subject: item.name.to_string(),
        attribute: LOCATION.to_string(),
        value: m.place.name(),
        change: m.change,
        previous: match m.change {
            Change::Restate => Some(m.place.name()),
            _ => m.previous.map(Place::name),
        },
    }
}

fn where_is(item: &Item) -> String {
    format!("Where {} the {}?", item.is(), item.name)
}

/// The questions of an episode: where each item that is still around is (the latest place,
/// asked only about the last one of the episode, so that no horizon that keeps the question
/// hides a later move), where it was before its last move, and where items the conversation
/// never mentions are.
fn questions(rng: &mut ChaCha8Rng, moves: &[Move], absent: &[usize]) -> Vec<Question> {
    let mut out = Vec::new();
    let mut items: Vec<usize> = moves.iter().map(|m| m.item).collect();
    items.sort_unstable();
    items.dedup();
    for item in items {
        let history: Vec<&Move> = moves
            .iter()
            .filter(|m| m.item == item && m.change != Change::Restate)
            .collect();
        let Some(last) = history.last() else { continue };
        if last.change == Change::Remove {
            continue;
        }
        let evidence: Vec<DiaId> = history.iter().map(|m| m.dia_id).collect();
        out.push(Question {
            question: where_is(&ITEMS[item]),
            answer: last.place.name(),
            evidence: evidence.clone(),
            category: if history.len() >= 2 {
                Category::KnowledgeUpdate
            } else {
                Category::SingleHop
            },
        });
        if let (Change::Update, Some(before)) = (last.change, last.previous) {
            let it = ITEMS[item].it();
            out.push(Question {
                question: format!(
                    "Where was the {} before {it} moved to {}?",
                    ITEMS[item].name,
                    last.place.noun()
                ),
                answer: before.name(),
                evidence: evidence[evidence.len().saturating_sub(2)..].to_vec(),
                category: Category::Temporal,
            });
        }
    }
    for &item in absent.choose_multiple(rng, UNANSWERABLE) {
        out.push(Question {
            question: where_is(&ITEMS[item]),
            answer: UNKNOWN_ANSWER.to_string(),
            evidence: Vec::new(),
            category: Category::Unanswerable,
        });
    }
    out.sort_by(|a, b| {
        (a.last_session().unwrap_or(u32::MAX), &a.question)
            .cmp(&(b.last_session().unwrap_or(u32::MAX), &b.question))
    });
    out
}

// ---------------------------------------------------------------------------------------------
// The task
// ---------------------------------------------------------------------------------------------

/// Ask where things are, answered by the built-in answerer role. Credit: 1 for the right
/// place, 0.5 for a place the item was at at another time (a stale memory, or for a "before"
/// question the place it moved to), 0 otherwise; an answer that names the right place and a
/// wrong one hedges and gets 0.5.
#[derive(Debug, Clone, Copy, Default)]
struct WhereIsIt;

/// Whether the normalised `answer` names `place` as whole words.
fn names(answer: &str, place: &str) -> bool {
    let place = normalize_answer(place);
    !place.is_empty() && format!(" {answer} ").contains(&format!(" {place} "))
}

impl WhereIsIt {
    /// Every place the item a question is about was at in the episode (as cut to its horizon);
    /// empty for a question without evidence.
    fn places(episode: &Episode, question: &Question) -> Vec<String> {
        let item = episode
            .facts
            .iter()
            .find(|f| question.evidence.contains(&f.dia_id))
            .map(|f| f.subject.as_str());
        let mut places: Vec<String> = episode
            .facts
            .iter()
            .filter(|f| Some(f.subject.as_str()) == item && f.change != Change::Remove)
            .map(|f| f.value.clone())
            .collect();
        places.dedup();
        places
    }

    /// The task's term of the reward for `answer`, in [0, 1].
    fn credit(episode: &Episode, question: &Question, answer: &str) -> f64 {
        let answer = normalize_answer(answer);
        let right = names(&answer, &question.answer);
        let stale = Self::places(episode, question)
            .iter()
            .filter(|p| normalize_answer(p) != normalize_answer(&question.answer))
            .any(|p| names(&answer, p));
        match (right, stale) {
            (true, false) => 1.0,
            (_, true) => 0.5,
            (false, false) => 0.0,
        }
    }
}

impl Task for WhereIsIt {
    fn name(&self) -> &str {
        "where is it"
    }

    /// The questions, asked as the answerer's questions are: only the scoring is this task's.
    fn probes(&self, episode: &Episode) -> Vec<Probe> {
        QuestionAnswering.probes(episode)
    }

    fn request(&self, episode: &Episode, probe: &Probe, memories: &[&str]) -> Request {
        QuestionAnswering.request(episode, probe, memories)
    }

    fn score(&self, episode: &Episode, probe: &Probe, response: &Response) -> AnswerScore {
        let answer = response.answer_text();
        let Some(question) = episode.questions.get(probe.index) else {
            return AnswerScore::default();
        };
        AnswerScore {
            f1: Self::credit(episode, question, answer),
            em: exact_match(answer, &question.answer),
            bleu1: bleu1(answer, &question.answer),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The program
// ---------------------------------------------------------------------------------------------

/// The household's own seed: the episodes stay the same whatever the training seed.
const HOUSEHOLD_SEED: u64 = 7;

struct Args {
    run_dir: PathBuf,
    seed: u64,
}

/// The arguments, or `None` when help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>> {
    let mut parsed = Args {
        run_dir: PathBuf::from("runs/household"),
        seed: 0,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--run-dir" => parsed.run_dir = value("--run-dir")?.into(),
            "--seed" => {
                let v = value("--seed")?;
                parsed.seed = v
                    .parse()
                    .with_context(|| format!("--seed {v:?} is not an integer"))?;
            }
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(parsed))
}

/// The smoke configuration, sized for the household: 4 then 8 sessions, a few steps a stage.
fn config(seed: u64) -> Result<TrainConfig> {
    let mut config = TrainConfig::smoke();
    config.seed = seed;
    config.data = DataSpec::External {
        name: "household".into(),
    };
    config.sft.epochs = 8;
    config.answerer.epochs = 7;
    config.curriculum = CurriculumConfig {
        horizons: vec![4, 8],
        steps_per_stage: 3,
        validate_every: 3,
        keep: Keep::Best,
    };
    config.eval = EvalConfig {
        validation_episodes: 2,
        validation_sessions: None,
        test_episodes: 8,
        sessions: 8,
    };
    config.validate()?;
    Ok(config)
}

fn run() -> Result<()> {
    let Some(args) = parse_args(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let env = Household::new(HOUSEHOLD_SEED);
    for split in Split::ALL {
        for episode in env.episodes(split) {
            validate_episode(&episode)
                .with_context(|| format!("the household's {split} episodes are malformed"))?;
        }
    }
    let config = config(args.seed).context("invalid training configuration")?;
    let options = RunOptions {
        dir: args.run_dir,
        ..RunOptions::default()
    };
    let start = Instant::now();
    let mut last_progress: Option<String> = None;
    let mut observe = |event: Event<'_>| match event {
        Event::Phase { name, .. } => {
            if let Some(message) = last_progress.take() {
                eprintln!("  ({message})");
            }
            eprintln!("[{:>5.0}s] {name}", start.elapsed().as_secs_f64());
        }
        Event::Progress { message, .. } => last_progress = Some(message),
        Event::Step(m) => eprintln!(
            "  step {} ({} sessions): reward {:.3}, F1 {:.3}, {:.1} memories, {} format errors",
            m.step, m.horizon, m.reward_global.mean, m.f1, m.memory_entries, m.format_errors
        ),
    };
    let device = Default::default();
    let report = train::run_with::<B>(&env, config, &options, &device, &mut observe)
        .with_context(|| format!("training in {} failed", options.dir.display()))?;
    println!("{}", report.table);
    for missing in &report.unavailable {
        println!("{}: not available ({})", missing.system, missing.reason);
    }
    println!("run directory: {}", report.dir.display());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use memr2_trainer::agent::memory_texts;
    use memr2_trainer::sft::teacher_replay;

    use super::*;

    fn all_episodes() -> Vec<Episode> {
        let env = Household::new(HOUSEHOLD_SEED);
        Split::ALL.iter().flat_map(|&s| env.episodes(s)).collect()
    }

    #[test]
    fn episodes_are_valid_deterministic_and_have_questions_at_every_horizon() {
        let env = Household::new(HOUSEHOLD_SEED);
        assert_eq!(env.episodes(Split::Test), env.episodes(Split::Test));
        for episode in all_episodes() {
            validate_episode(&episode).unwrap();
            assert!(!episode.facts.is_empty(), "{}", episode.id);
            let short = episode.with_horizon(4);
            let answerable = short
                .questions
                .iter()
                .filter(|q| q.category != Category::Unanswerable)
                .count();
            assert!(answerable > 0, "{} has no question at 4 sessions", episode.id);
        }
    }

    #[test]
    fn the_perfect_teacher_remembers_every_answer() {
        let agent = TrainConfig::smoke().agent;
        for episode in all_episodes() {
            let mut teacher = memr2_sim::Teacher::new(memr2_sim::TeacherConfig::perfect(), 0);
            let (_, snapshots) = teacher_replay(&episode, episode.sessions.len(), &mut teacher, &agent);
            let memory = snapshots.last().unwrap();
            for q in &episode.questions {
                if q.category == Category::Unanswerable {
                    continue;
                }
                let shown = memory_texts(memory, &q.question, &agent).join(" | ");
                let answer = normalize_answer(&q.answer);
                assert!(
                    names(&normalize_answer(&shown), &answer),
                    "{}: {:?} -> {:?} not in {shown:?}",
                    episode.id,
                    q.question,
                    q.answer
                );
            }
        }
    }

    #[test]
    fn stale_places_get_half_credit() {
        let episode = all_episodes()
            .into_iter()
            .find(|e| {
                e.questions
                    .iter()
                    .any(|q| q.category == Category::KnowledgeUpdate)
            })
            .unwrap();
        let (index, question) = episode
            .questions
            .iter()
            .enumerate()
            .find(|(_, q)| q.category == Category::KnowledgeUpdate)
            .unwrap();
        let places = WhereIsIt::places(&episode, question);
        let stale = places.iter().find(|p| **p != question.answer).unwrap();
        let probe = &WhereIsIt.probes(&episode)[index];
        let score = |a: &str| WhereIsIt.score(&episode, probe, &Response::Answer(a.into()));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let right = score(&format!("the {}", question.answer));
        assert!(close(right.f1, 1.0) && close(right.em, 1.0), "{right:?}");
        assert!(close(score(stale).f1, 0.5));
        assert!(close(score(&format!("{} or {stale}", question.answer)).f1, 0.5));
        assert!(close(score("on the moon").f1, 0.0));
        let unparsed = WhereIsIt.score(&episode, probe, &Response::Unparsed("{".into()));
        assert!(close(unparsed.f1, 0.0));
    }
}
