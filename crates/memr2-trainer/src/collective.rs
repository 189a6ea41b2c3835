//! Collectives across the processes of a run: the seam data parallelism over several
//! processes or machines stands on.
//!
//! A run under `mpirun -np N` is N copies of the same program, the *ranks*. Every rank holds
//! the whole state (configuration, data, model, optimizer, random generators) and takes the
//! same decisions; only the model's heavy work is divided:
//! - generation: the parts of a batch ([`AgentConfig::generation_shards`](crate::config::AgentConfig))
//!   are dealt to the ranks, each rank generates its own, and the completions are gathered;
//! - gradients: the shards of a minibatch ([`TrainConfig::shards`](crate::TrainConfig)) are
//!   dealt the same way, each rank back-propagates its own, and their sum is formed by one
//!   all-reduce of one flat buffer;
//! - log-probabilities recomputed for the update, likewise.
//!
//! Each part keeps the seed it has in one process and the parts are put back in their order,
//! so a run gives the same numbers on 1 and on N ranks (up to the order in which the
//! all-reduce adds shards' gradients). Every rank then applies the same optimizer step, so the
//! weights stay the same on all ranks ([`check_replicas`]). Rank 0 alone writes the run
//! directory; the others read from it what rank 0 wrote after a [`Collective::barrier`].
//!
//! The interface is small (rank, size, all-reduce, all-gather, broadcast) so that a transport
//! other than MPI (NCCL for GPUs) can be added beside [`Single`] and the MPI one without
//! touching the training loop. A collective that cannot complete (a rank died or hangs) does
//! not return: the implementation ends the whole job with a clear message.

use std::cell::RefCell;
use std::sync::{Arc, Barrier, Mutex, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Collective operations among the ranks of a run. Every rank must call the same operations
/// in the same order; the calling thread blocks until all ranks have called.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place; every rank gets the same sum.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// Every rank's bytes, in rank order, on every rank.
    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>>;
    /// Rank `root`'s bytes, on every rank.
    fn broadcast(&self, bytes: &mut Vec<u8>, root: usize) {
        let all = self.all_gather(if self.rank() == root { bytes } else { &[] });
        *bytes = all.into_iter().nth(root).unwrap_or_default();
    }
    /// Returns once every rank has called it.
    fn barrier(&self) {
        self.all_gather(&[]);
    }
    /// Time this process has spent inside collectives so far: communication plus waiting for
    /// the slowest rank (zero for transports that do not count it).
    fn waited(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// Ends every rank of the job with `code` after `message`, when one rank cannot go on
    /// while the others would wait for it.
    fn abort(&self, message: &str, code: i32) -> ! {
        eprintln!("error: {message}");
        std::process::exit(code)
    }
}

/// One process alone: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) {}
    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        vec![mine.to_vec()]
    }
    fn broadcast(&self, _bytes: &mut Vec<u8>, _root: usize) {}
    fn barrier(&self) {}
}

/// Ranks as threads of one process: [`InProcess::ranks`] makes `n` handles, one per thread.
/// What the multi-process equivalence rests on can be checked with it in an ordinary test, and
/// a library user can try a data-parallel setup without MPI.
pub struct InProcess {
    rank: usize,
    size: usize,
    shared: Arc<Exchange>,
}

struct Exchange {
    slots: Mutex<Vec<Vec<u8>>>,
    barrier: Barrier,
}

impl InProcess {
    /// Handles for ranks `0..n`, to be used one per thread.
    pub fn ranks(n: usize) -> Vec<InProcess> {
        let n = n.max(1);
        let shared = Arc::new(Exchange {
            slots: Mutex::new(vec![Vec::new(); n]),
            barrier: Barrier::new(n),
        });
        (0..n)
            .map(|rank| InProcess {
                rank,
                size: n,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl Collective for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) {
        let all = self.all_gather(&f32_bytes(buf));
        buf.fill(0.0);
        for part in &all {
            for (total, value) in buf.iter_mut().zip(bytes_f32(part)) {
                *total += value;
            }
        }
    }
    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        self.shared.slots.lock().expect("exchange lock")[self.rank] = mine.to_vec();
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().expect("exchange lock").clone();
        // Nobody writes the next operation's slot before everyone has read this one's.
        self.shared.barrier.wait();
        all
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bytes_f32(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

static WORLD: RwLock<Option<Arc<dyn Collective>>> = RwLock::new(None);

thread_local! {
    static LOCAL: RefCell<Option<Arc<dyn Collective>>> = const { RefCell::new(None) };
}

/// The ranks this thread works with: the one [`with_world`] set for the thread, else the one
/// [`install`]ed for the process, else [`Single`].
pub fn world() -> Arc<dyn Collective> {
    if let Some(local) = LOCAL.with(|l| l.borrow().clone()) {
        return local;
    }
    WORLD
        .read()
        .expect("world lock")
        .clone()
        .unwrap_or_else(|| Arc::new(Single))
}

/// Makes `world` the process's ranks (a program does this once, at start).
pub fn install(world: Arc<dyn Collective>) {
    *WORLD.write().expect("world lock") = Some(world);
}

/// Takes back the process's ranks, so that the program can shut its transport down.
pub fn uninstall() -> Option<Arc<dyn Collective>> {
    WORLD.write().expect("world lock").take()
}

/// Runs `f` on this thread with `world` as its ranks.
pub fn with_world<R>(world: Arc<dyn Collective>, f: impl FnOnce() -> R) -> R {
    let previous = LOCAL.with(|l| l.borrow_mut().replace(world));
    struct Restore(Option<Arc<dyn Collective>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            LOCAL.with(|l| *l.borrow_mut() = previous);
        }
    }
    let _restore = Restore(previous);
    f()
}

/// True on the rank that writes the run directory (rank 0).
pub fn is_writer() -> bool {
    world().rank() == 0
}

/// Every rank's `value`, in rank order, on every rank.
pub fn gather<T: Serialize + DeserializeOwned>(value: &T) -> Vec<T> {
    let world = world();
    let bytes = rmp_serde::to_vec(value).expect("a value serialises");
    world
        .all_gather(&bytes)
        .iter()
        .enumerate()
        .map(|(rank, b)| {
            rmp_serde::from_slice(b).unwrap_or_else(|e| {
                world.abort(
                    &format!("rank {rank} sent a value that does not read back: {e}"),
                    3,
                )
            })
        })
        .collect()
}

/// `(0..n).map(work)`, with item `i` computed by rank `i % size` and every result gathered on
/// every rank, in index order. `local` computes a rank's own indices (it may spread them over
/// threads); on one rank it is simply called with `0..n`.
pub fn dealt<R, L>(n: usize, local: L) -> Vec<R>
where
    R: Serialize + DeserializeOwned,
    L: FnOnce(&[usize]) -> Vec<R>,
{
    let world = world();
    let (rank, size) = (world.rank(), world.size());
    let mine: Vec<usize> = (rank..n).step_by(size.max(1)).collect();
    let results = local(&mine);
    if size == 1 {
        return results;
    }
    let mut parts: Vec<std::vec::IntoIter<R>> = gather(&results).into_iter().map(Vec::into_iter).collect();
    (0..n)
        .map(|i| {
            parts[i % size]
                .next()
                .unwrap_or_else(|| world.abort(&format!("rank {} sent too few results", i % size), 3))
        })
        .collect()
}

/// Runs `f` on rank 0 alone, the other ranks waiting until it has finished: work whose output
/// they then read (a run directory rank 0 creates). An error on rank 0 becomes an error on
/// every rank.
pub fn rank0_only(f: impl FnOnce() -> Result<(), crate::TrainError>) -> Result<(), crate::TrainError> {
    let world = world();
    let out = if world.rank() == 0 { f() } else { Ok(()) };
    if world.size() == 1 {
        return out;
    }
    let mut status = match &out {
        Err(e) if world.rank() == 0 => e.to_string().into_bytes(),
        _ => Vec::new(),
    };
    world.broadcast(&mut status, 0);
    if world.rank() != 0 && !status.is_empty() {
        return Err(crate::TrainError::Invalid(format!(
            "rank 0 failed: {}",
            String::from_utf8_lossy(&status)
        )));
    }
    out
}

/// Runs `f` on rank 0 first and on the other ranks once it has finished (a tokenizer rank 0
/// trains and writes, the others read), with [`rank0_only`]'s errors.
pub fn rank0_first<R>(f: impl FnOnce() -> Result<R, crate::TrainError>) -> Result<R, crate::TrainError> {
    if world().rank() == 0 {
        let mut out = None;
        rank0_only(|| f().map(|r| out = Some(r)))?;
        Ok(out.expect("rank 0 ran it"))
    } else {
        rank0_only(|| Ok(()))?;
        f()
    }
}

/// The number of processes an MPI launcher started this one among (`mpirun`, Hydra, Slurm's
/// PMI), or `None` when none did.
pub fn launched_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// True when an MPI launcher started this process (PMIx, as Slurm's `--mpi=pmix`, names no
/// size, only the rank).
pub fn launched_by_mpi() -> bool {
    launched_ranks().is_some() || std::env::var_os("PMIX_RANK").is_some()
}

/// A checksum of `model`'s parameters (CRC-32 of their bytes in visiting order).
pub fn parameter_checksum<B: burn::tensor::backend::Backend>(model: &memr2_policy::Transformer<B>) -> u32 {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::Tensor;
    struct Crc(crc32fast::Hasher);
    impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for Crc {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data();
            self.0.update(data.as_bytes());
        }
    }
    let mut visitor = Crc(crc32fast::Hasher::new());
    model.visit(&mut visitor);
    visitor.0.finalize()
}

/// Checks that every rank holds the same weights; an error naming the ranks that differ from
/// rank 0 otherwise. `when` says where in the run (for the message).
pub fn check_replicas<B: burn::tensor::backend::Backend>(
    model: &memr2_policy::Transformer<B>,
    when: &str,
) -> Result<(), crate::TrainError> {
    if world().size() == 1 {
        return Ok(());
    }
    let sums = gather(&parameter_checksum(model));
    let differ: Vec<usize> = (1..sums.len()).filter(|&r| sums[r] != sums[0]).collect();
    if differ.is_empty() {
        tracing::debug!(checksum = sums[0], when, "replicas agree");
        Ok(())
    } else {
        Err(crate::TrainError::Invalid(format!(
            "the weights of rank(s) {differ:?} differ from rank 0's {when} (checksums {sums:?})"
        )))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `f` on `n` threads, each with its own rank of an in-process world.
    pub(crate) fn on_ranks<R: Send>(n: usize, f: impl Fn() -> R + Sync) -> Vec<R> {
        let f = &f;
        std::thread::scope(|scope| {
            let handles: Vec<_> = InProcess::ranks(n)
                .into_iter()
                .map(|rank| scope.spawn(move || with_world(Arc::new(rank), f)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("rank thread"))
                .collect()
        })
    }

    #[test]
    fn in_process_collectives_sum_gather_and_broadcast() {
        let out = on_ranks(3, || {
            let w = world();
            let mut buf = vec![w.rank() as f32, 1.0];
            w.all_reduce_sum(&mut buf);
            let gathered = gather(&(w.rank() * 10));
            let mut bytes = if w.rank() == 2 {
                b"two".to_vec()
            } else {
                Vec::new()
            };
            w.broadcast(&mut bytes, 2);
            w.barrier();
            (buf, gathered, bytes)
        });
        for (buf, gathered, bytes) in out {
            assert_eq!(buf, vec![3.0, 3.0]);
            assert_eq!(gathered, vec![0, 10, 20]);
            assert_eq!(bytes, b"two");
        }
    }

    #[test]
    fn dealt_work_is_the_same_on_any_number_of_ranks() {
        let expected: Vec<u64> = (0..11u64).map(|i| i * i).collect();
        assert_eq!(
            dealt(11, |mine| mine.iter().map(|&i| (i * i) as u64).collect()),
            expected
        );
        for n in [2, 3, 5] {
            let out = on_ranks(n, || {
                let rank = world().rank();
                dealt(11, |mine: &[usize]| {
                    assert!(mine.iter().all(|i| i % n == rank), "rank {rank} got {mine:?}");
                    mine.iter().map(|&i| (i * i) as u64).collect()
                })
            });
            assert!(out.iter().all(|o| *o == expected), "{n} ranks: {out:?}");
        }
    }

    #[test]
    fn rank0_first_passes_rank_0_s_error_to_every_rank() {
        let out = on_ranks(2, || {
            rank0_first(|| {
                if world().rank() == 0 {
                    Err(crate::TrainError::Invalid("disk full".into()))
                } else {
                    Ok(())
                }
            })
            .map_err(|e| e.to_string())
        });
        assert!(out[0].as_ref().unwrap_err().contains("disk full"));
        assert!(
            out[1].as_ref().unwrap_err().contains("rank 0 failed: "),
            "{:?}",
            out[1]
        );
    }

    #[test]
    fn diverged_replicas_are_found() {
        use crate::update::tests::model;
        let base = model();
        // Initialised here: burn initialises parameters lazily, from a generator threads share.
        parameter_checksum(&base);
        let out = on_ranks(2, || {
            let m = base.clone();
            let m = if world().rank() == 1 {
                use burn::module::Module;
                m.map(&mut Perturb)
            } else {
                m
            };
            check_replicas(&m, "after step 1").map_err(|e| e.to_string())
        });
        assert!(
            out[0].as_ref().unwrap_err().contains("rank(s) [1] differ"),
            "{out:?}"
        );
        let same = on_ranks(2, || check_replicas(&base, "at start").is_ok());
        assert_eq!(same, vec![true, true]);
    }

    struct Perturb;
    impl<B: burn::tensor::backend::Backend> burn::module::ModuleMapper<B> for Perturb {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<burn::prelude::Tensor<B, D>>,
        ) -> burn::module::Param<burn::prelude::Tensor<B, D>> {
            param.map(|t| t.add_scalar(1e-3))
        }
    }
}
