//! Prints one synthetic episode (sessions, gold facts, questions) and size figures per horizon.
//!
//! `cargo run -p memr2-sim --example show_world -- [smoke] [seed]`

use memr2_sim::{Environment, Split, SyntheticWorld, WorldConfig, stats};

fn main() -> Result<(), memr2_sim::SimError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = if args.iter().any(|a| a == "smoke") {
        WorldConfig::smoke()
    } else {
        WorldConfig::default_cpu()
    };
    let seed = args.iter().find_map(|a| a.parse().ok()).unwrap_or(0);
    let world = SyntheticWorld::new(cfg, seed)?;
    let episode = world.episode(Split::Train, 0);
    println!("{} speakers {:?}", episode.id, episode.speakers);
    for s in &episode.sessions {
        println!("--- session {} ({})", s.index, s.date);
        println!("{}", s.text());
    }
    println!("--- facts");
    for f in &episode.facts {
        println!(
            "{} {:?} {} [{} {} = {} prev {:?}]",
            f.dia_id, f.change, f.text, f.subject, f.attribute, f.value, f.previous
        );
    }
    println!("--- questions");
    for q in &episode.questions {
        let ev: Vec<String> = q.evidence.iter().map(ToString::to_string).collect();
        println!(
            "[{}] {} -> {} ({})",
            q.category,
            q.question,
            q.answer,
            ev.join(" ")
        );
    }
    let train = world.episodes(Split::Train);
    for h in [8, 16, 32] {
        let cut: Vec<_> = train.iter().map(|e| e.with_horizon(h)).collect();
        let s = stats(&cut);
        println!(
            "horizon {h}: {:.1} words/session, {:.1} turns/session, {:.1} questions/episode, {:.1} facts/episode",
            s.words as f64 / s.sessions as f64,
            s.turns as f64 / s.sessions as f64,
            s.questions as f64 / s.conversations as f64,
            s.facts as f64 / s.conversations as f64
        );
    }
    let mut vocabulary = std::collections::BTreeSet::new();
    let mut transcript_chars = 0;
    for e in &train {
        for s in &e.sessions {
            transcript_chars += s.text().len();
            for t in &s.turns {
                vocabulary.extend(
                    t.text
                        .split(|c: char| !c.is_alphanumeric())
                        .map(str::to_lowercase),
                );
            }
        }
        for q in &e.questions {
            vocabulary.extend(
                q.question
                    .split(|c: char| !c.is_alphanumeric())
                    .map(str::to_lowercase),
            );
        }
    }
    let sessions = stats(&train).sessions;
    println!(
        "{} distinct words; {:.0} transcript characters per session",
        vocabulary.len(),
        transcript_chars as f64 / sessions as f64
    );
    Ok(())
}
