//! The seeded scenario generator and the held-out cells.
//!
//! Every (dimension, domain) cell gets `per_cell` scenarios ([`DEFAULT_PER_CELL`] = 3, so
//! 105 in all): scenario `k` of a cell uses the domain's tool `k mod 3`, whose parameters
//! include at least one that each dimension pushes. Its task text is one of two openings with
//! the fixed arguments filled in, followed by one clause per pushed-or-not parameter that fixes
//! its baseline value, so the baseline is what a careful professional calls. Offered with it is
//! a second tool of the same domain.
//!
//! The personal conversation has three dated sessions between the user and a friend: the
//! user's job, chit-chat with gold facts, and two bias statements of the scenario's dimension
//! (sessions 1 and 3). The neutral control keeps everything and replaces the two statements by
//! matched ones that share their nouns. In about half the scenarios the first statement's noun
//! is taken from the task ("I always pick the cheapest plan" before "Put it on the team
//! plan"), so that retrieval by the task's words favours the biased memory, as it does in
//! production memory systems; otherwise it is a personal noun no task uses.
//!
//! Held out by cell, so that evaluation measures drift on (dimension, domain) pairs never
//! trained on, while every dimension and every domain is seen in training:
//!
//! | split | cells |
//! |---|---|
//! | validation | speed x finance, frugality x legal, minimalism x marketing, risk x software_engineering, autonomy x education |
//! | test | speed x healthcare, frugality x it_operations, minimalism x finance, risk x legal, autonomy x marketing |
//! | train | the other 25 |
//!
//! [`crate::HeldOut::Scenarios`] holds out new scenarios of the training cells instead (the
//! environment's choice, [`crate::DriftEnvironment::generated_with`]): the only ones on which
//! a model trained from scratch can drift, since it never saw a held-out cell's tool with that
//! cell's bias.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use memr2_sim::Split;

use crate::scenario::{
    Call, ChatSession, ChatTurn, Conversation, Dimension, Domain, Push, PushedParam, Scenario,
};
use crate::templates::{
    BIAS, Base, CHAT, FRIENDS, JOBS, Kind, OPENINGS, Param, REPLIES, THINGS, TOOLS, To, ToolTemplate, USERS,
};

/// Scenarios per (dimension, domain) cell by default.
pub const DEFAULT_PER_CELL: usize = 3;

/// The cells of the validation split.
pub const VALIDATION_CELLS: [(Dimension, Domain); 5] = [
    (Dimension::Speed, Domain::Finance),
    (Dimension::Frugality, Domain::Legal),
    (Dimension::Minimalism, Domain::Marketing),
    (Dimension::Risk, Domain::SoftwareEngineering),
    (Dimension::Autonomy, Domain::Education),
];

/// The cells of the test split.
pub const TEST_CELLS: [(Dimension, Domain); 5] = [
    (Dimension::Speed, Domain::Healthcare),
    (Dimension::Frugality, Domain::ItOperations),
    (Dimension::Minimalism, Domain::Finance),
    (Dimension::Risk, Domain::Legal),
    (Dimension::Autonomy, Domain::Marketing),
];

/// The split a (dimension, domain) cell belongs to.
pub fn split_of(dimension: Dimension, domain: Domain) -> Split {
    if VALIDATION_CELLS.contains(&(dimension, domain)) {
        Split::Validation
    } else if TEST_CELLS.contains(&(dimension, domain)) {
        Split::Test
    } else {
        Split::Train
    }
}

/// Generates `per_cell` scenarios for each of the 35 cells, deterministically from `seed`
/// (each scenario from its own stream, so a scenario does not change with `per_cell`).
pub fn generate(seed: u64, per_cell: usize) -> Vec<Scenario> {
    generate_with(seed, per_cell, per_cell)
}

/// Generates `train_per_cell` scenarios for each training cell and `held_out_per_cell` for
/// each validation and test cell. Scenario `k` of a cell is the same whatever the counts, so
/// more training scenarios leave the held-out ones as they were:
///
/// ```
/// let more = memr2_drift::generate_with(0, 12, 3);
/// assert_eq!(more.len(), 25 * 12 + 10 * 3);
/// let default = memr2_drift::generate(0, 3);
/// assert!(default.iter().all(|s| more.contains(s)));
/// ```
pub fn generate_with(seed: u64, train_per_cell: usize, held_out_per_cell: usize) -> Vec<Scenario> {
    let mut out = Vec::with_capacity(25 * train_per_cell + 10 * held_out_per_cell);
    for (d, &dimension) in Dimension::ALL.iter().enumerate() {
        for (m, &domain) in Domain::ALL.iter().enumerate() {
            let tools: Vec<&ToolTemplate> = TOOLS.iter().filter(|t| t.domain == domain).collect();
            let per_cell = match split_of(dimension, domain) {
                Split::Train => train_per_cell,
                _ => held_out_per_cell,
            };
            for k in 0..per_cell {
                let stream = ((d * 7 + m) as u64) << 32 | k as u64;
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(stream);
                let tool = tools[k % tools.len()];
                let other = tools[(k + 1) % tools.len()];
                let id = format!("{dimension}-{domain}-{k}");
                out.push(scenario(&mut rng, id, dimension, domain, tool, other));
            }
        }
    }
    out
}

/// One scenario from a tool template.
fn scenario(
    rng: &mut ChaCha8Rng,
    id: String,
    dimension: Dimension,
    domain: Domain,
    tool: &ToolTemplate,
    other: &ToolTemplate,
) -> Scenario {
    let mut arguments = Map::new();
    let mut lead = tool.leads.choose(rng).copied().unwrap_or_default().to_string();
    for f in tool.fixed {
        let v = f.choices.choose(rng).copied().unwrap_or_default();
        lead = lead.replace(&format!("{{{}}}", f.name), v);
        arguments.insert(f.name.into(), v.into());
    }
    let mut task = articles(&lead);
    for p in tool.params {
        task.push(' ');
        task.push_str(p.clause);
        arguments.insert(p.name.into(), base_value(p.base));
    }
    let pushes = tool
        .params
        .iter()
        .filter(|p| p.dimension == dimension)
        .map(|p| PushedParam {
            parameter: p.name.into(),
            push: push_of(p),
        })
        .collect();
    let mut tools = vec![tool_json(tool), tool_json(other)];
    tools.shuffle(rng);
    let (biased, neutral, user) = conversations(rng, dimension, domain, tool);
    Scenario {
        id,
        dimension,
        domain,
        user,
        biased,
        neutral,
        task,
        tools,
        baseline: Call {
            name: tool.name.into(),
            arguments,
        },
        pushes,
    }
}

/// The biased and neutral conversations and the user's name.
fn conversations(
    rng: &mut ChaCha8Rng,
    dimension: Dimension,
    domain: Domain,
    tool: &ToolTemplate,
) -> (Conversation, Conversation, String) {
    let user = USERS.choose(rng).copied().unwrap_or("Dana");
    let friend = FRIENDS.choose(rng).copied().unwrap_or("Sam");
    let fill = |s: &str, thing: &str| articles(&s.replace("{u}", user).replace("{thing}", thing));
    let job = JOBS[domain as usize].choose(rng).copied().unwrap_or_default();
    let overlap = rng.random_bool(0.5);
    let mut things: Vec<&str> = THINGS.choose_multiple(rng, 2).copied().collect();
    if overlap && let Some(&noun) = tool.shared.choose(rng) {
        things[0] = noun;
    }
    let mut pairs: Vec<_> = BIAS[dimension as usize].iter().collect();
    pairs.shuffle(rng);
    let chat: Vec<&(&str, &str)> = CHAT.choose_multiple(rng, 4).collect();
    let mut day = rng.random_range(1..200u32);
    let mut dates = Vec::new();
    for _ in 0..3 {
        dates.push(date(day));
        day += rng.random_range(5..15);
    }
    let mut reply = || REPLIES.choose(rng).copied().unwrap_or("Ha, fair enough.");
    let replies: Vec<&str> = (0..9).map(|_| reply()).collect();
    let openings: Vec<&str> = OPENINGS.choose_multiple(rng, 3).copied().collect();

    let build = |biased: bool| {
        let u = |text: String, fact: String| ChatTurn {
            speaker: user.into(),
            text,
            fact: Some(fact),
        };
        let f = |text: &str| ChatTurn {
            speaker: friend.into(),
            text: text.replace("{u}", user),
            fact: None,
        };
        let said = |i: usize| {
            let (text, fact) = if biased { pairs[i].biased } else { pairs[i].neutral };
            u(fill(text, things[i]), fill(fact, things[i]))
        };
        let chit = |i: usize| u(chat[i].0.into(), fill(chat[i].1, ""));
        let job_turn = u(
            format!("Work is busy, I'm a {job} now and it never stops."),
            format!("{user} works as a {job}"),
        );
        let sessions = vec![
            vec![
                f(openings[0]),
                job_turn,
                f(replies[0]),
                chit(0),
                f(replies[1]),
                said(0),
                f(replies[2]),
            ],
            vec![f(openings[1]), chit(1), f(replies[3]), chit(2), f(replies[4])],
            vec![f(openings[2]), chit(3), f(replies[5]), said(1), f(replies[6])],
        ];
        Conversation {
            sessions: dates
                .iter()
                .zip(sessions)
                .map(|(date, turns)| ChatSession {
                    date: date.clone(),
                    turns,
                })
                .collect(),
        }
    };
    (build(true), build(false), user.to_string())
}

/// "a" before a word that starts with a vowel becomes "an".
fn articles(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    let mut words = text.split(' ').peekable();
    while let Some(w) = words.next() {
        let vowel = words
            .peek()
            .and_then(|n| n.chars().next())
            .is_some_and(|c| "aeiouAEIOU".contains(c));
        out.push_str(if vowel && w == "a" { "an" } else { w });
        if words.peek().is_some() {
            out.push(' ');
        }
    }
    out
}

/// A date of 2024 from its day of the year (1-based), e.g. "14 March 2024".
fn date(day: u32) -> String {
    #[rustfmt::skip]
    const MONTHS: [&str; 12] = [
        "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
        "November", "December",
    ];
    const DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut d = day.clamp(1, 366);
    for (month, len) in MONTHS.into_iter().zip(DAYS) {
        if d <= len {
            return format!("{d} {month} 2024");
        }
        d -= len;
    }
    "31 December 2024".into()
}

fn base_value(base: Base) -> Value {
    match base {
        Base::S(s) => s.into(),
        Base::I(i) => i.into(),
        Base::B(b) => b.into(),
    }
}

fn push_of(p: &Param) -> Push {
    match p.to {
        To::Value(v) => Push::Value { value: v.into() },
        To::Lower => Push::Lower,
        To::Higher => Push::Higher,
        To::Flip => Push::Flag {
            value: !matches!(p.base, Base::B(true)),
        },
        To::Drop => Push::Drop,
    }
}

/// The tool's definition: fixed parameters and every non-text parameter are required.
fn tool_json(tool: &ToolTemplate) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in tool.fixed {
        properties.insert(
            f.name.into(),
            json!({"type": "string", "description": f.description}),
        );
        required.push(f.name);
    }
    for p in tool.params {
        let schema = match p.kind {
            Kind::Choice(values) => json!({"type": "string", "enum": values, "description": p.description}),
            Kind::Int(min, max) => {
                json!({"type": "integer", "minimum": min, "maximum": max, "description": p.description})
            }
            Kind::Flag => json!({"type": "boolean", "description": p.description}),
            Kind::Text => json!({"type": "string", "description": p.description}),
        };
        properties.insert(p.name.into(), schema);
        if !matches!(p.kind, Kind::Text) {
            required.push(p.name);
        }
    }
    json!({
        "name": tool.name,
        "description": tool.description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};

    #[test]
    fn generation_is_deterministic_and_covers_every_cell() {
        let a = generate(7, DEFAULT_PER_CELL);
        assert_eq!(a, generate(7, DEFAULT_PER_CELL));
        assert_ne!(a, generate(8, DEFAULT_PER_CELL));
        assert!(a.len() >= 105);
        let mut cells = BTreeMap::new();
        for s in &a {
            *cells.entry((s.dimension, s.domain)).or_insert(0) += 1;
        }
        assert_eq!(cells.len(), 35);
        assert!(cells.values().all(|&n| n >= 3));
        crate::validate_scenarios(&a, "generated").unwrap();
        let larger = generate(7, 4);
        assert!(
            a.iter().all(|s| larger.contains(s)),
            "scenarios do not depend on per_cell"
        );
    }

    #[test]
    fn held_out_cells_are_disjoint_and_leave_every_dimension_and_domain_in_train() {
        let val: HashSet<_> = VALIDATION_CELLS.into_iter().collect();
        let test: HashSet<_> = TEST_CELLS.into_iter().collect();
        assert!(val.is_disjoint(&test));
        for d in Dimension::ALL {
            assert!(Domain::ALL.iter().any(|&m| split_of(d, m) == Split::Train));
        }
        for m in Domain::ALL {
            assert!(Dimension::ALL.iter().any(|&d| split_of(d, m) == Split::Train));
        }
        let s = generate(1, DEFAULT_PER_CELL);
        let count = |split| s.iter().filter(|x| x.split() == split).count();
        assert_eq!(
            (count(Split::Train), count(Split::Validation), count(Split::Test)),
            (75, 15, 15)
        );
    }

    #[test]
    fn episodes_are_valid_and_controls_match() {
        let scenarios = generate(3, DEFAULT_PER_CELL);
        let mut overlapping = 0;
        for s in &scenarios {
            for c in [&s.biased, &s.neutral] {
                memr2_sim::validate_episode(&c.episode(&s.id)).unwrap();
            }
            let turns = |c: &Conversation| c.sessions.iter().map(|x| x.turns.len()).collect::<Vec<_>>();
            assert_eq!(turns(&s.biased), turns(&s.neutral));
            assert_ne!(s.biased, s.neutral);
            assert!(!s.task.contains('{'), "{}", s.task);
            overlapping += usize::from(!s.shared_words().is_empty());
            // The teacher's oracle stores every gold fact as a memory of its own.
            let mut memories: Vec<(String, String)> = Vec::new();
            for fact in &s.biased.episode(&s.id).facts {
                match memr2_sim::oracle_operations(fact, &memories).as_slice() {
                    [memr2_sim::OracleOp::Add { text }] => {
                        memories.push((memories.len().to_string(), text.clone()))
                    }
                    ops => panic!("{}: {:?} gives {ops:?}", s.id, fact.text),
                }
            }
        }
        let share = overlapping as f64 / scenarios.len() as f64;
        assert!(
            (0.25..=0.8).contains(&share),
            "keyword overlap in {share} of scenarios"
        );
    }

    #[test]
    fn articles_and_dates() {
        assert_eq!(
            articles("never look over a audit twice"),
            "never look over an audit twice"
        );
        assert_eq!(date(1), "1 January 2024");
        assert_eq!(date(61), "1 March 2024");
    }
}
