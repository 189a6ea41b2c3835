//! Generation of one synthetic episode: people, a timeline of attribute changes, dated
//! sessions of paraphrased turns, and gold facts.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, RngCore};

use super::WorldConfig;
use super::questions;
use super::text::{CHIT_CHAT, GREETINGS, Voice, decoy_template, fact_templates, reaction_templates, render};
use crate::attribute::Attribute;
use crate::episode::{DiaId, Episode, Session, Turn};
use crate::fact::{Change, Fact};

const FEMALE: &[&str] = &[
    "Alice", "Clara", "Emma", "Grace", "Julia", "Nina", "Olivia", "Sofia",
];
const MALE: &[&str] = &["Ben", "David", "Felix", "Hugo", "Leo", "Oscar", "Paul", "Victor"];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Probability that the turn after a fact is the other speaker's reaction to it.
const REACTION: f64 = 0.6;
/// Probability that a chit-chat turn mentions an attribute value without stating a fact.
const DECOY: f64 = 0.25;
/// Weight of a restatement among the candidate events of a fact turn.
const RESTATE_WEIGHT: f64 = 0.35;

/// A person of the episode.
pub(crate) struct Person {
    pub name: &'static str,
    pub female: bool,
    /// Index of the speaker who talks about this person (themself for speakers).
    pub teller: usize,
    /// How the teller refers to this person ("my sister Clara"); empty for speakers.
    pub reference: String,
}

/// One event of the timeline, stated by one turn.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub dia_id: DiaId,
    pub person: usize,
    pub attribute: Attribute,
    pub change: Change,
    pub value: &'static str,
    pub previous: Option<&'static str>,
}

/// What is known of one person's attribute while the timeline is built.
#[derive(Default, Clone)]
struct Slot {
    value: Option<&'static str>,
    changes: usize,
    last_session: u32,
    held: Vec<&'static str>,
}

pub(crate) fn episode(cfg: &WorldConfig, rng: &mut impl RngCore, id: String) -> Episode {
    let people = pick_people(cfg.people, rng);
    let mut slots = vec![vec![Slot::default(); cfg.attributes.len()]; people.len()];
    let mut events: Vec<Event> = Vec::new();
    let mut sessions = Vec::with_capacity(cfg.sessions);
    let mut day = days_from_civil(2022, 1, 1) + rng.random_range(0..365);
    for s in 1..=cfg.sessions as u32 {
        if s > 1 {
            day += rng.random_range(3..=14);
        }
        let progress = f64::from(s - 1) / cfg.sessions as f64;
        let n_turns = rng.random_range(cfg.min_turns..=cfg.max_turns) as u32;
        let offset = (s - 1) % 2;
        let speaker_of = |t: u32| ((t - 1 + offset) % 2) as usize;
        let n_facts = rng.random_range(cfg.min_fact_turns..=cfg.max_fact_turns);
        let mut positions: Vec<u32> = (2..=n_turns).collect();
        positions.shuffle(rng);
        positions.truncate(n_facts);
        let mut turns: Vec<Turn> = Vec::with_capacity(n_turns as usize);
        let mut previous_event: Option<Event> = None;
        for t in 1..=n_turns {
            let sp = speaker_of(t);
            let dia_id = DiaId::new(s, t);
            let event = if positions.contains(&t) {
                pick_event(cfg, rng, &people, &mut slots, sp, s, progress, dia_id)
            } else {
                None
            };
            let text = if let Some(ev) = &event {
                let p = &people[ev.person];
                let voice = Voice {
                    third: (ev.person != sp).then_some(p.reference.as_str()),
                    female: p.female,
                };
                let template = fact_templates(ev.attribute, ev.change)
                    .choose(rng)
                    .copied()
                    .unwrap_or("");
                render(template, &voice, ev.value, ev.previous.unwrap_or(""))
            } else if t == 1 {
                let other = people[1 - sp].name;
                GREETINGS
                    .choose(rng)
                    .copied()
                    .unwrap_or("Hi {O}!")
                    .replace("{O}", other)
            } else {
                let me = Voice {
                    third: None,
                    female: people[sp].female,
                };
                match previous_event.as_ref().filter(|_| rng.random_bool(REACTION)) {
                    Some(prev) => {
                        let template = reaction_templates(prev.attribute, prev.change)
                            .choose(rng)
                            .copied()
                            .unwrap_or("");
                        render(template, &me, prev.value, "")
                    }
                    None if rng.random_bool(DECOY) => {
                        let a = *cfg.attributes.choose(rng).unwrap_or(&Attribute::City);
                        let v = a.values().choose(rng).copied().unwrap_or("");
                        render(decoy_template(a), &me, v, "")
                    }
                    None => CHIT_CHAT.choose(rng).copied().unwrap_or("").to_string(),
                }
            };
            turns.push(Turn {
                dia_id,
                speaker: people[sp].name.to_string(),
                text,
            });
            previous_event = event.clone();
            events.extend(event);
        }
        sessions.push(Session {
            index: s,
            date: format_date(day),
            turns,
        });
    }
    let facts = events
        .iter()
        .map(|e| {
            let p = &people[e.person];
            Fact {
                speaker: people[p.teller].name.to_string(),
                dia_id: e.dia_id,
                text: e.attribute.fact_sentence(e.change, p.name, e.value),
                subject: p.name.to_string(),
                attribute: e.attribute.name().to_string(),
                value: e.value.to_string(),
                change: e.change,
                previous: e.previous.map(str::to_string),
            }
        })
        .collect();
    let questions = questions::generate(cfg, rng, &people, &events);
    Episode {
        id,
        speakers: people[..2].iter().map(|p| p.name.to_string()).collect(),
        sessions,
        questions,
        facts,
    }
}

fn pick_people(n: usize, rng: &mut impl RngCore) -> Vec<Person> {
    let mut pool: Vec<(&'static str, bool)> = FEMALE
        .iter()
        .map(|n| (*n, true))
        .chain(MALE.iter().map(|n| (*n, false)))
        .collect();
    pool.shuffle(rng);
    pool.truncate(n);
    pool.into_iter()
        .enumerate()
        .map(|(i, (name, female))| {
            if i < 2 {
                return Person {
                    name,
                    female,
                    teller: i,
                    reference: String::new(),
                };
            }
            let relation = match (rng.random_bool(0.5), female) {
                (true, _) => "friend",
                (false, true) => "sister",
                (false, false) => "brother",
            };
            Person {
                name,
                female,
                teller: i % 2,
                reference: format!("my {relation} {name}"),
            }
        })
        .collect()
}

/// Chooses the event a fact turn of speaker `sp` states, and applies it to the slots.
#[allow(clippy::too_many_arguments)]
fn pick_event(
    cfg: &WorldConfig,
    rng: &mut impl RngCore,
    people: &[Person],
    slots: &mut [Vec<Slot>],
    sp: usize,
    session: u32,
    progress: f64,
    dia_id: DiaId,
) -> Option<Event> {
    let mut candidates: Vec<(usize, usize, Change, f64)> = Vec::new();
    for p in (0..people.len()).filter(|&p| people[p].teller == sp) {
        for (ai, &a) in cfg.attributes.iter().enumerate() {
            let slot = &slots[p][ai];
            if slot.last_session == session {
                continue;
            }
            let fresh = a.values().iter().any(|v| !slot.held.contains(v));
            match slot.value {
                None if slot.changes < cfg.max_changes && fresh => {
                    candidates.push((p, ai, Change::New, 3.0 * (1.0 - progress) + 0.3));
                }
                None => {}
                Some(_) => {
                    if slot.changes < cfg.max_changes {
                        if a.updatable() && fresh {
                            candidates.push((p, ai, Change::Update, 1.0));
                        }
                        if a.removable() {
                            candidates.push((p, ai, Change::Remove, 0.5));
                        }
                    }
                    candidates.push((p, ai, Change::Restate, RESTATE_WEIGHT));
                }
            }
        }
    }
    let total: f64 = candidates.iter().map(|c| c.3).sum();
    if candidates.is_empty() || total <= 0.0 {
        return None;
    }
    let mut r = rng.random::<f64>() * total;
    let mut chosen = candidates[candidates.len() - 1];
    for c in &candidates {
        if r < c.3 {
            chosen = *c;
            break;
        }
        r -= c.3;
    }
    let (p, ai, change, _) = chosen;
    let attribute = cfg.attributes[ai];
    let current = slots[p][ai].value;
    let value = match change {
        Change::New | Change::Update => {
            let held_by_others: Vec<&str> = (0..people.len())
                .filter(|&q| q != p)
                .filter_map(|q| slots[q][ai].value)
                .collect();
            let fresh: Vec<&'static str> = attribute
                .values()
                .iter()
                .copied()
                .filter(|v| !slots[p][ai].held.contains(v))
                .collect();
            let unshared: Vec<&'static str> = fresh
                .iter()
                .copied()
                .filter(|v| !held_by_others.contains(v))
                .collect();
            let pool = if unshared.is_empty() { &fresh } else { &unshared };
            pool.choose(rng).copied()?
        }
        Change::Remove | Change::Restate => current?,
    };
    let slot = &mut slots[p][ai];
    slot.last_session = session;
    match change {
        Change::New | Change::Update => {
            slot.value = Some(value);
            slot.held.push(value);
            slot.changes += 1;
        }
        Change::Remove => {
            slot.value = None;
            slot.changes += 1;
        }
        Change::Restate => {}
    }
    Some(Event {
        dia_id,
        person: p,
        attribute,
        change,
        value,
        previous: current,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// "8 May 2023" for a day count since 1970-01-01.
fn format_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{d} {} {y}", MONTHS[(m - 1) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(format_date(days_from_civil(2023, 5, 8)), "8 May 2023");
        assert_eq!(format_date(days_from_civil(2024, 2, 29)), "29 February 2024");
        assert_eq!(format_date(days_from_civil(2022, 12, 31) + 1), "1 January 2023");
    }
}
