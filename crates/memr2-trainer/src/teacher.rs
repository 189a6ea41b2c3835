//! A served model as the warm start's teacher, for data without gold facts (LoCoMo read without
//! its facts, LongMemEval, a user's own conversations): the teacher is asked the extractor's
//! and the manager's role prompts exactly as the agent would be, session after session, over
//! a memory its own operations build; what it writes, when it parses, becomes the extractor
//! and manager examples, rendered in the roles' canonical format. Its memory after each
//! horizon gives the answerer examples, with the gold answers, as the perfect teacher's memory
//! does where there are gold facts.
//!
//! Requests are greedy and carry no seed, so they are the same on every run, and are cached in
//! the run directory: the warm start, the tokenizer and the answerer's corpus, a resumed run
//! and a repeated one all replay the teacher without calling out again.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use memr2_openai::client::{ClientStats, Endpoint};
use memr2_policy::roles::{self, ChatPrompt, MemoryView, Role};
use memr2_sim::Episode;
use memr2_store::Snapshot;
use serde::Serialize;

use crate::TrainError;
use crate::agent::{RolloutState, apply_operation, extractor_prompt_for, prepare_embeddings, retrieve};
use crate::config::AgentConfig;
use crate::served::{ServedModel, chat_request};
use crate::sft::{TeacherExample, answerer_examples};

/// Most tokens the teacher may write for a reply, as a multiple of the role's budget in the
/// run's tokens: a served model counts with its own tokenizer, and a reply cut short does not
/// parse. Examples longer than the run's context are cut when the corpus is tokenised.
const REPLY_BUDGET_FACTOR: usize = 4;

/// Counts of what the teacher was asked and what came back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TeacherStats {
    /// Chunks of sessions the extractor's prompt was asked for.
    pub chunks: usize,
    /// Extractor replies that did not parse (the chunk gives no example and no fact).
    pub extractor_unparsed: usize,
    /// Facts the teacher wrote, each asked of the manager.
    pub facts: usize,
    /// Manager replies that did not parse (the fact gives no example and changes nothing).
    pub manager_unparsed: usize,
    /// Operations of parsed manager replies that the memory applied.
    pub operations_applied: u64,
    /// Operations naming a memory the teacher was not shown, or that the memory rejected.
    pub operations_invalid: u64,
}

impl TeacherStats {
    fn add(&mut self, other: &TeacherStats) {
        self.chunks += other.chunks;
        self.extractor_unparsed += other.extractor_unparsed;
        self.facts += other.facts;
        self.manager_unparsed += other.manager_unparsed;
        self.operations_applied += other.operations_applied;
        self.operations_invalid += other.operations_invalid;
    }
}

/// What a served teacher wrote over a set of episodes.
#[derive(Clone, Debug, Default)]
pub struct TeacherTraces {
    /// Extractor and manager examples, episode after episode.
    pub examples: Vec<TeacherExample>,
    /// Answerer examples over the teacher's memory after each horizon asked for, with the
    /// gold answers ([`answerer_examples`]).
    pub answerer: Vec<TeacherExample>,
    /// Counts.
    pub stats: TeacherStats,
}

/// One episode replayed by the teacher: its examples, its memory after each session (`[0]`
/// empty) and its counts.
struct Replay {
    examples: Vec<TeacherExample>,
    snapshots: Vec<Snapshot>,
    stats: TeacherStats,
}

/// The replays of a set of episodes, with what identifies them: the episodes' ids and the
/// horizon replayed.
struct Replays {
    key: (Vec<String>, usize),
    episodes: Vec<Replay>,
}

/// A model behind an OpenAI-compatible endpoint writing the warm start's examples.
pub struct ServedTeacher {
    model: ServedModel,
    /// The last replays, which the tokenizer, the warm start and the answerer's corpus share.
    replays: Mutex<Option<Replays>>,
}

impl ServedTeacher {
    /// Connects (as [`ServedModel::connect`]), caching replies in `cache_dir`.
    pub fn connect(endpoint: Endpoint, cache_dir: Option<&Path>) -> Result<Self, TrainError> {
        Ok(Self {
            model: ServedModel::connect("teacher", endpoint, cache_dir)?,
            replays: Mutex::new(None),
        })
    }

    /// Requests, cache hits, retries, errors and tokens so far.
    pub fn stats(&self) -> ClientStats {
        self.model.stats()
    }

    /// Replays the teacher through the first `max(horizons)` sessions of every episode (once
    /// per set of episodes and horizon: a later call with the same ones reuses the replays),
    /// and gives its examples, the answerer's examples after each of `horizons`, and the
    /// counts. Fails if the endpoint failed after its retries.
    pub fn traces(
        &self,
        episodes: &[Episode],
        horizons: &[usize],
        cfg: &AgentConfig,
    ) -> Result<TeacherTraces, TrainError> {
        let max = horizons.iter().copied().max().unwrap_or(0);
        let key = (episodes.iter().map(|e| e.id.clone()).collect(), max);
        let mut replays = self.replays.lock().expect("not poisoned");
        if replays.as_ref().is_none_or(|r| r.key != key) {
            *replays = Some(Replays {
                episodes: self.replay_all(episodes, max, cfg)?,
                key,
            });
        }
        let replays = &replays.as_ref().expect("just filled").episodes;
        let mut out = TeacherTraces::default();
        for (episode, replay) in episodes.iter().zip(replays) {
            out.examples.extend(replay.examples.iter().cloned());
            out.stats.add(&replay.stats);
            for &h in horizons {
                let memory = &replay.snapshots[h.min(replay.snapshots.len() - 1)];
                out.answerer
                    .extend(answerer_examples(&episode.with_horizon(h), memory, cfg));
            }
        }
        Ok(out)
    }

    /// Replays every episode to `max` sessions, the episodes side by side (as many at once as
    /// the endpoint's concurrency), each one's requests in order since each depends on the
    /// memory the previous ones built.
    fn replay_all(
        &self,
        episodes: &[Episode],
        max: usize,
        cfg: &AgentConfig,
    ) -> Result<Vec<Replay>, TrainError> {
        let _span = tracing::info_span!("teacher", episodes = episodes.len()).entered();
        let workers = self
            .model
            .client()
            .endpoint()
            .concurrency
            .clamp(1, episodes.len().max(1));
        let next = AtomicUsize::new(0);
        let done: Mutex<Vec<(usize, Replay)>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(episode) = episodes.get(i) else { break };
                        let replay = self.replay(episode, max, cfg);
                        done.lock().expect("not poisoned").push((i, replay));
                    }
                });
            }
        });
        self.model.check()?;
        cfg.embedder.check()?;
        let mut done = done.into_inner().expect("not poisoned");
        done.sort_by_key(|(i, _)| *i);
        let mut stats = TeacherStats::default();
        done.iter().for_each(|(_, r)| stats.add(&r.stats));
        tracing::info!(?stats, client = ?self.stats(), "teacher traces");
        let asked = stats.chunks + stats.facts;
        let unparsed = stats.extractor_unparsed + stats.manager_unparsed;
        if 2 * unparsed > asked {
            tracing::warn!(
                unparsed,
                asked,
                "most of the teacher's replies did not parse, so the warm start has few examples: \
                 the teacher model should follow the roles' JSON formats (a capable instruction \
                 model does; a run's own tiny policy on data unlike its own does not)"
            );
        }
        Ok(done.into_iter().map(|(_, replay)| replay).collect())
    }

    /// The teacher's reply to a role prompt, or `None` when the endpoint failed (recorded
    /// for the check that ends [`Self::replay_all`]).
    fn ask(&self, prompt: &ChatPrompt, budget: usize) -> Option<String> {
        let request = chat_request(prompt, budget * REPLY_BUDGET_FACTOR, 0.0, 1.0, None);
        self.model.reply_text(self.model.client().chat(&request))
    }

    /// One episode's replay; cut short (and failing the check) when the endpoint fails.
    fn replay(&self, episode: &Episode, max: usize, cfg: &AgentConfig) -> Replay {
        let episode = episode.with_horizon(max);
        let mut state = RolloutState::new(cfg);
        let mut out = Replay {
            examples: Vec::new(),
            snapshots: Vec::new(),
            stats: TeacherStats::default(),
        };
        // An endpoint that fails ends the episode: the run fails at the check that follows.
        'episode: for session in &episode.sessions {
            for chunk in session.chunks(cfg.chunks_per_session) {
                out.stats.chunks += 1;
                let prompt = extractor_prompt_for(&session.date, chunk);
                let Some(reply) = self.ask(&prompt, cfg.max_extract_tokens) else {
                    break 'episode;
                };
                let mut facts = match roles::parse_facts(&reply) {
                    Ok(facts) => facts,
                    Err(error) => {
                        tracing::debug!(%error, %reply, "the teacher's facts did not parse");
                        out.stats.extractor_unparsed += 1;
                        continue;
                    }
                };
                facts.truncate(cfg.max_facts_per_chunk);
                out.examples.push(TeacherExample {
                    role: Role::Extractor,
                    prompt,
                    completion: roles::render_facts(&facts),
                });
                prepare_embeddings(cfg, facts.iter().map(|f| f.fact.as_str()));
                for fact in &facts {
                    out.stats.facts += 1;
                    let shown = retrieve(&state.store, &fact.fact, cfg);
                    let views: Vec<MemoryView<'_>> = shown
                        .iter()
                        .map(|(alias, _, text)| MemoryView { alias, text })
                        .collect();
                    let prompt = roles::manager_prompt(&fact.fact, &views);
                    let Some(reply) = self.ask(&prompt, cfg.max_manage_tokens) else {
                        break 'episode;
                    };
                    let operations = match roles::parse_operations(&reply) {
                        Ok(operations) => operations,
                        Err(error) => {
                            tracing::debug!(%error, %reply, "the teacher's operations did not parse");
                            out.stats.manager_unparsed += 1;
                            continue;
                        }
                    };
                    out.examples.push(TeacherExample {
                        role: Role::Manager,
                        prompt,
                        completion: roles::render_operations(&operations),
                    });
                    let speaker = Some(fact.speaker.clone()).filter(|s| !s.is_empty());
                    for operation in operations {
                        apply_operation(&mut state, operation, &shown, speaker.clone(), session.index);
                    }
                }
            }
            let snapshot = state.store.snapshot();
            state.snapshots.push(snapshot);
        }
        let ops = &state.stats.ops;
        out.stats.operations_applied = ops.add + ops.update + ops.delete + ops.noop;
        out.stats.operations_invalid = ops.invalid;
        out.snapshots = state.snapshots;
        out
    }
}
