//! Questions of every category, derived from the synthetic world's timeline.
//!
//! Questions about a current value always name the turn that set it among their evidence, so
//! a horizon that keeps the question also keeps every change before it, and no later change
//! can exist (the value is the last one of the episode). Temporal questions are asked only
//! about a final update, so the memory text "X, previously Y" stays correct to the end.

use std::collections::BTreeSet;

use rand::RngCore;
use rand::seq::SliceRandom;

use super::WorldConfig;
use super::generate::{Event, Person};
use crate::attribute::{Attribute, with_article};
use crate::episode::{Category, DiaId, Question};
use crate::fact::Change;

/// The gold answer of questions the conversation cannot answer.
pub const UNKNOWN_ANSWER: &str = "unknown";

/// Relative weights of the categories in an episode's question mix.
const MIX: [(Category, usize); 7] = [
    (Category::KnowledgeUpdate, 4),
    (Category::SingleHop, 3),
    (Category::Temporal, 2),
    (Category::MultiHop, 2),
    (Category::Unanswerable, 2),
    (Category::OpenDomain, 1),
    (Category::Adversarial, 1),
];

fn ask(a: Attribute, s: &str) -> String {
    match a {
        Attribute::City => format!("Where does {s} live?"),
        Attribute::Job => format!("What does {s} do for a living?"),
        Attribute::Employer => format!("Which company does {s} work for?"),
        Attribute::Partner => format!("Who is {s} dating?"),
        Attribute::Pet => format!("What pet does {s} have?"),
        Attribute::Hobby => format!("Which hobby does {s} enjoy?"),
        Attribute::Diet => format!("What diet does {s} follow?"),
    }
}

fn ask_now(a: Attribute, s: &str) -> String {
    ask(a, s).replace('?', " now?")
}

fn ask_before(a: Attribute, s: &str, v: &str) -> String {
    match a {
        Attribute::City => format!("Where did {s} live before moving to {v}?"),
        Attribute::Job => format!(
            "What did {s} do for a living before becoming {}?",
            with_article(v)
        ),
        Attribute::Employer => format!("Which company did {s} work for before {v}?"),
        Attribute::Partner => format!("Who was {s} dating before {v}?"),
        Attribute::Pet => format!("What pet did {s} have before the {v}?"),
        Attribute::Hobby => format!("Which hobby did {s} enjoy before {v}?"),
        Attribute::Diet => format!("What diet did {s} follow before going {v}?"),
    }
}

fn question(category: Category, question: String, answer: &str, evidence: &[DiaId]) -> Question {
    let mut evidence = evidence.to_vec();
    evidence.sort_unstable();
    evidence.dedup();
    Question {
        question,
        answer: answer.to_string(),
        evidence,
        category,
    }
}

pub(crate) fn generate(
    cfg: &WorldConfig,
    rng: &mut impl RngCore,
    people: &[Person],
    events: &[Event],
) -> Vec<Question> {
    // history[p][ai]: the changes (not restatements) of one person's attribute, in order.
    let history: Vec<Vec<Vec<&Event>>> = (0..people.len())
        .map(|p| {
            cfg.attributes
                .iter()
                .map(|&a| {
                    events
                        .iter()
                        .filter(|e| e.person == p && e.attribute == a && e.change != Change::Restate)
                        .collect()
                })
                .collect()
        })
        .collect();
    let final_value = |p: usize, ai: usize| -> Option<&'static str> {
        history[p][ai]
            .last()
            .filter(|e| e.change != Change::Remove)
            .map(|e| e.value)
    };
    let dias = |h: &[&Event]| h.iter().map(|e| e.dia_id).collect::<Vec<_>>();
    let ever_held = |q: usize, ai: usize, v: &str| {
        history[q][ai]
            .iter()
            .any(|e| e.value == v && e.change != Change::Remove)
    };

    let mut by_cat: Vec<(Category, Vec<Question>)> = MIX.iter().map(|(c, _)| (*c, Vec::new())).collect();
    let mut ku_value = Vec::new();
    let mut ku_no = Vec::new();
    let mut ku_yes = Vec::new();
    let push = |by_cat: &mut Vec<(Category, Vec<Question>)>, q: Question| {
        if let Some((_, v)) = by_cat.iter_mut().find(|(c, _)| *c == q.category) {
            v.push(q);
        }
    };
    for (p, person) in people.iter().enumerate() {
        let name = person.name;
        for (ai, &a) in cfg.attributes.iter().enumerate() {
            let h = &history[p][ai];
            let ev = dias(h);
            let Some(last) = h.last() else {
                push(
                    &mut by_cat,
                    question(Category::Unanswerable, ask(a, name), UNKNOWN_ANSWER, &[]),
                );
                continue;
            };
            if h.len() == 1 && last.change == Change::New {
                push(
                    &mut by_cat,
                    question(Category::SingleHop, ask(a, name), last.value, &ev),
                );
            }
            if let Some(v) = final_value(p, ai) {
                if h.len() >= 2 {
                    ku_value.push(question(Category::KnowledgeUpdate, ask_now(a, name), v, &ev));
                }
                let still = format!("Does {name} still {}?", a.clause_base(v));
                ku_yes.push(question(Category::KnowledgeUpdate, still, "yes", &ev));
                if a == Attribute::City
                    && let Some(country) = Attribute::country_of(v)
                {
                    let q = format!("In which country does {name} live?");
                    push(&mut by_cat, question(Category::OpenDomain, q, country, &ev));
                }
                for (q, other) in people.iter().enumerate().filter(|&(q, _)| q != p) {
                    if !ever_held(q, ai, v) {
                        let text = format!("Does {} {}?", other.name, a.clause_base(v));
                        push(&mut by_cat, question(Category::Adversarial, text, "no", &ev));
                    }
                }
                let unique = (0..people.len())
                    .filter(|&q| q != p)
                    .all(|q| !ever_held(q, ai, v));
                if unique {
                    for (bi, &b) in cfg.attributes.iter().enumerate().filter(|&(bi, _)| bi != ai) {
                        if let Some(w) = final_value(p, bi) {
                            let subject = format!("the person who {}", a.clause(v));
                            let mut evidence = ev.clone();
                            evidence.extend(dias(&history[p][bi]));
                            push(
                                &mut by_cat,
                                question(Category::MultiHop, ask(b, &subject), w, &evidence),
                            );
                        }
                    }
                }
            }
            if matches!(last.change, Change::Update | Change::Remove)
                && let Some(old) = last.previous
            {
                let still = format!("Does {name} still {}?", a.clause_base(old));
                ku_no.push(question(Category::KnowledgeUpdate, still, "no", &ev));
            }
            if last.change == Change::Update
                && let Some(old) = last.previous
            {
                let q = ask_before(a, name, last.value);
                push(
                    &mut by_cat,
                    question(Category::Temporal, q, old, &ev[ev.len().saturating_sub(2)..]),
                );
            }
        }
    }
    for v in [&mut ku_value, &mut ku_no, &mut ku_yes] {
        v.shuffle(rng);
    }
    // Knowledge-update questions alternate between "latest value", "no longer" and "still".
    let mut ku = Vec::new();
    let (mut a, mut b, mut c) = (ku_value.into_iter(), ku_no.into_iter(), ku_yes.into_iter());
    loop {
        let before = ku.len();
        ku.extend(a.next());
        ku.extend(b.next());
        ku.extend(c.next());
        if ku.len() == before {
            break;
        }
    }
    for (cat, v) in &mut by_cat {
        if *cat == Category::KnowledgeUpdate {
            *v = std::mem::take(&mut ku);
        } else {
            v.shuffle(rng);
        }
    }
    select(cfg.questions, &by_cat, cfg.sessions as u32)
}

/// Picks `n` questions in three nested passes, so that shorter horizons keep a fair share:
/// a third with evidence in the first quarter of the sessions, a third within the first half,
/// the rest anywhere. Each pass follows the category mix of [`MIX`].
fn select(n: usize, by_cat: &[(Category, Vec<Question>)], sessions: u32) -> Vec<Question> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(n);
    for (band, target) in [(sessions / 4, n / 3), (sessions / 2, 2 * n / 3), (u32::MAX, n)] {
        let inside: Vec<(Category, Vec<Question>)> = by_cat
            .iter()
            .map(|(c, qs)| {
                let qs = qs
                    .iter()
                    .filter(|q| q.last_session().is_none_or(|l| l <= band) && !seen.contains(&q.question))
                    .cloned()
                    .collect();
                (*c, qs)
            })
            .collect();
        for q in select_mix(target.saturating_sub(out.len()), inside) {
            seen.insert(q.question.clone());
            out.push(q);
        }
    }
    out.sort_by(|x, y| {
        (x.last_session().unwrap_or(u32::MAX), x.category, &x.question).cmp(&(
            y.last_session().unwrap_or(u32::MAX),
            y.category,
            &y.question,
        ))
    });
    out
}

/// Takes each category's share of `n` (by [`MIX`]), then fills up from what is left.
fn select_mix(n: usize, by_cat: Vec<(Category, Vec<Question>)>) -> Vec<Question> {
    let total: usize = MIX.iter().map(|(_, w)| w).sum();
    let mut queues: Vec<std::vec::IntoIter<Question>> = MIX
        .iter()
        .map(|(c, _)| {
            by_cat
                .iter()
                .find(|(x, _)| x == c)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
                .into_iter()
        })
        .collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(n);
    let mut take = |i: usize, out: &mut Vec<Question>| {
        for q in queues[i].by_ref() {
            if seen.insert(q.question.clone()) {
                out.push(q);
                return true;
            }
        }
        false
    };
    for (i, (_, w)) in MIX.iter().enumerate() {
        for _ in 0..n * w / total {
            if out.len() < n {
                take(i, &mut out);
            }
        }
    }
    while out.len() < n {
        let mut progressed = false;
        for i in 0..MIX.len() {
            if out.len() < n && take(i, &mut out) {
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    out
}
