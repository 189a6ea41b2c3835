//! Benchmarks of the memory store: branch against deep clone, operations, BM25 retrieval, save
//! and load, on entries drawn from a Zipf-distributed vocabulary like natural text.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use memr2_store::{Applied, Entry, MemoryId, Operation, OperationRecord, Store};

/// SplitMix64: a small deterministic generator, enough for benchmark inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Texts of 10-20 words from a 3,000-word vocabulary with Zipf (s = 1) frequencies.
struct TextGen {
    words: Vec<String>,
    cdf: Vec<f64>,
    rng: Rng,
}

impl TextGen {
    const VOCAB: usize = 3000;

    fn new(seed: u64) -> Self {
        let syllables = [
            "ka", "lo", "mi", "ren", "su", "ta", "vel", "dor", "ni", "pa", "qu", "zen",
        ];
        let mut rng = Rng(seed);
        let words: Vec<String> = (0..Self::VOCAB)
            .map(|i| {
                let len = 1 + rng.below(3);
                let mut w: String = (0..len).map(|_| syllables[rng.below(syllables.len())]).collect();
                w.push_str(&i.to_string());
                w
            })
            .collect();
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=Self::VOCAB)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= total);
        Self { words, cdf, rng }
    }

    fn word(&mut self) -> &str {
        let u = self.rng.unit();
        let rank = self.cdf.partition_point(|&c| c < u).min(Self::VOCAB - 1);
        &self.words[rank]
    }

    fn text(&mut self, min: usize, max: usize) -> String {
        let n = min + self.rng.below(max - min + 1);
        (0..n)
            .map(|_| self.word().to_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn fact(&mut self) -> String {
        self.text(10, 20)
    }
}

fn add(text: String) -> Operation {
    Operation::Add { text, speaker: None }
}

fn build_store(n: usize, texts_gen: &mut TextGen) -> Store {
    let mut store = Store::new();
    for i in 0..n {
        store
            .apply(add(texts_gen.fact()), (i / 1000) as u32)
            .expect("valid text");
    }
    store
}

/// What a store without structural sharing would have to copy to branch: every entry and
/// every log record (the BM25 index is left out, which flatters the deep copy).
fn deep_clone(store: &Store) -> (BTreeMap<MemoryId, Entry>, Vec<OperationRecord>) {
    let entries = store.entries().map(|e| (e.id, e.clone())).collect();
    let log = store
        .operations()
        .map(|r| OperationRecord {
            before: r.before.as_deref().cloned().map(Into::into),
            after: r.after.as_deref().cloned().map(Into::into),
            ..r.clone()
        })
        .collect();
    (entries, log)
}

fn branch(c: &mut Criterion) {
    let mut texts_gen = TextGen::new(1);
    let stores: Vec<(usize, Store)> = [1_000, 10_000, 100_000]
        .iter()
        .map(|&n| (n, build_store(n, &mut texts_gen)))
        .collect();
    let mut group = c.benchmark_group("branch");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (n, store) in &stores {
        let snapshot = store.snapshot();
        group.bench_with_input(BenchmarkId::new("snapshot_branch", n), &snapshot, |b, s| {
            b.iter(|| s.branch())
        });
        group.bench_with_input(BenchmarkId::new("store_snapshot", n), store, |b, s| {
            b.iter(|| s.snapshot())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("deep_clone");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    for (n, store) in &stores {
        group.bench_with_input(BenchmarkId::from_parameter(n), store, |b, s| {
            b.iter(|| deep_clone(black_box(s)))
        });
    }
    group.finish();
}

/// Times one kind of operation on a store kept at 100k entries; untimed work restores the size.
/// The last case times the first write to a fresh branch, which copies the paths it touches.
fn operations(c: &mut Criterion) {
    let mut texts_gen = TextGen::new(2);
    let n = 100_000;
    // Built here and owned by the benchmark alone: steady-state writes mutate nodes in place.
    let mut store = build_store(n, &mut texts_gen);
    let texts: Vec<String> = (0..4096).map(|_| texts_gen.fact()).collect();
    let mut rng = Rng(3);
    let mut group = c.benchmark_group("apply_100k");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));

    let mut live: Vec<MemoryId> = store.entries().map(|e| e.id).collect();
    let mut t = 0usize;
    group.bench_function("add", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let text = texts[t % texts.len()].clone();
                t += 1;
                let start = Instant::now();
                let applied = store.apply(add(text), 7).expect("valid");
                total += start.elapsed();
                let id = applied.id().expect("added");
                store.apply(Operation::Delete { id }, 7).expect("exists");
            }
            total
        })
    });
    group.bench_function("update", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let id = live[rng.below(live.len())];
                let text = texts[t % texts.len()].clone();
                t += 1;
                let start = Instant::now();
                store.apply(Operation::Update { id, text }, 8).expect("exists");
                total += start.elapsed();
            }
            total
        })
    });
    group.bench_function("delete", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let at = rng.below(live.len());
                let id = live.swap_remove(at);
                let start = Instant::now();
                store.apply(Operation::Delete { id }, 9).expect("exists");
                total += start.elapsed();
                let text = texts[t % texts.len()].clone();
                t += 1;
                live.push(store.apply(add(text), 9).expect("valid").id().expect("added"));
            }
            total
        })
    });
    // The first write to a fresh branch copies the paths it touches: the worst case per op.
    let snapshot = store.snapshot();
    group.bench_function("update_first_after_branch", |b| {
        b.iter_batched(
            || {
                let id = live[rng.below(live.len())];
                (snapshot.branch(), id, texts[rng.below(texts.len())].clone())
            },
            |(mut branch, id, text)| {
                branch.apply(Operation::Update { id, text }, 10).expect("exists");
                branch
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Mean cost per operation over a long mixed sequence (ADD, UPDATE, DELETE in turn) at 100k
/// entries, long enough to cross at least one rebuild of the BM25 base: the amortised cost,
/// rebuilds included. Also prints the slowest single operation seen (the worst case).
fn operation_sequence(c: &mut Criterion) {
    const OPS: usize = 30_000;
    let mut texts_gen = TextGen::new(6);
    let mut store = build_store(100_000, &mut texts_gen);
    let texts: Vec<String> = (0..4096).map(|_| texts_gen.fact()).collect();
    let mut live: Vec<MemoryId> = store.entries().map(|e| e.id).collect();
    let mut rng = Rng(7);
    let mut t = 0usize;
    let mut slowest = Duration::ZERO;
    let mut group = c.benchmark_group("apply_100k_sequence");
    group
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(10);
    group.bench_function(BenchmarkId::new("mixed_ops", OPS), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for i in 0..OPS {
                    let text = texts[t % texts.len()].clone();
                    t += 1;
                    let op = match i % 3 {
                        0 => add(text),
                        1 => Operation::Update {
                            id: live[rng.below(live.len())],
                            text,
                        },
                        _ => Operation::Delete {
                            id: live.swap_remove(rng.below(live.len())),
                        },
                    };
                    let start = Instant::now();
                    let applied = store.apply(op, 11).expect("valid");
                    let elapsed = start.elapsed();
                    total += elapsed;
                    slowest = slowest.max(elapsed);
                    if let Applied::Added(id) = applied {
                        live.push(id);
                    }
                }
            }
            total
        })
    });
    group.finish();
    eprintln!("apply_100k_sequence: slowest single operation {slowest:?}");
}

fn retrieval(c: &mut Criterion) {
    let mut texts_gen = TextGen::new(4);
    let store = build_store(10_000, &mut texts_gen);
    let queries: Vec<String> = (0..256).map(|_| texts_gen.text(5, 5)).collect();
    let mut group = c.benchmark_group("bm25_top10_10k");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let mut q = 0usize;
    group.bench_function("zipf_5_word_query", |b| {
        b.iter(|| {
            q += 1;
            store.search(&queries[q % queries.len()], 10, 0.0)
        })
    });
    group.finish();
}

fn persistence(c: &mut Criterion) {
    let mut texts_gen = TextGen::new(5);
    let store = build_store(100_000, &mut texts_gen);
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("memory.bin");
    let mut group = c.benchmark_group("file_100k");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(10);
    group.bench_function("save", |b| b.iter(|| store.save(&path).expect("saved")));
    store.save(&path).expect("saved");
    group.bench_function("load", |b| b.iter(|| Store::load(&path).expect("loaded")));
    group.finish();
}

criterion_group!(
    benches,
    branch,
    operations,
    operation_sequence,
    retrieval,
    persistence
);
criterion_main!(benches);
