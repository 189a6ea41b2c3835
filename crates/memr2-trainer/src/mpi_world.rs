//! [`Collective`] over MPI (Open MPI or MPICH, through rsmpi), for runs started by `mpirun`,
//! `srun` or any other MPI launcher. Built with the `mpi` feature.
//!
//! Every collective is issued as a non-blocking MPI operation and waited for with a deadline:
//! when a rank hangs, the others end the job with [`Collective::abort`] (`MPI_Abort`) and a
//! message naming the operation, instead of waiting for ever. When a rank dies, the launcher
//! ends the others (Open MPI's `mpirun` and Slurm both do). The deadline is
//! `MEMR2_COLLECTIVE_TIMEOUT_S` seconds, 600 unless set: it must cover the longest stretch one
//! rank can work alone (rank 0 writing a checkpoint or the report while the others wait).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::collective::Collective;

/// The ranks of an MPI job (`MPI_COMM_WORLD`).
pub struct MpiWorld {
    /// Held while calling MPI, so that no two threads are ever inside it at once (MPI is
    /// initialised with `Threading::Serialized`); finalises MPI when dropped.
    universe: Mutex<Universe>,
    rank: usize,
    size: usize,
    timeout: Duration,
    /// Nanoseconds spent waiting for collectives to complete.
    waited_ns: AtomicU64,
}

impl MpiWorld {
    /// Initialises MPI; an error when it was initialised already, when the library cannot give
    /// serialised threading (memr2 calls MPI from whichever thread runs the training loop), or
    /// when `MEMR2_COLLECTIVE_TIMEOUT_S` is not a positive number.
    pub fn init() -> Result<MpiWorld, String> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or("MPI was initialised already")?;
        if threading < mpi::Threading::Serialized {
            return Err(format!(
                "the MPI library gives {threading:?} threading; memr2 needs Serialized or Multiple"
            ));
        }
        let world = universe.world();
        let timeout = match std::env::var("MEMR2_COLLECTIVE_TIMEOUT_S") {
            Ok(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    format!("MEMR2_COLLECTIVE_TIMEOUT_S={v:?} is not a positive number of seconds")
                })?,
            Err(_) => Duration::from_secs(600),
        };
        Ok(MpiWorld {
            rank: world.rank() as usize,
            size: world.size() as usize,
            timeout,
            waited_ns: AtomicU64::new(0),
            universe: Mutex::new(universe),
        })
    }

    /// Waits for `request` until the deadline; past it, ends the job.
    fn wait<'a, D: ?Sized, S: mpi::request::Scope<'a>>(
        &self,
        world: &SimpleCommunicator,
        what: &str,
        mut request: mpi::request::Request<'a, D, S>,
    ) {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            match request.test() {
                Ok(_) => {
                    let waited = start.elapsed().as_nanos() as u64;
                    self.waited_ns.fetch_add(waited, Ordering::Relaxed);
                    return;
                }
                Err(pending) => request = pending,
            }
            if start.elapsed() > self.timeout {
                let message = format!(
                    "rank {} of {}: {what} did not complete within {:.0} s (MEMR2_COLLECTIVE_TIMEOUT_S): \
                     another rank died or hangs; ending the job",
                    self.rank,
                    self.size,
                    self.timeout.as_secs_f64()
                );
                eprintln!("error: {message}");
                tracing::error!("{message}");
                world.abort(2);
            }
            spins += 1;
            if spins < 1000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) {
        let _held = self.universe.lock().expect("MPI lock");
        let world = SimpleCommunicator::world();
        let send = buf.to_vec();
        mpi::request::scope(|scope| {
            let request =
                world.immediate_all_reduce_into(scope, &send[..], &mut buf[..], SystemOperation::sum());
            self.wait(&world, "an all-reduce", request);
        });
    }

    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        let Ok(len) = i32::try_from(mine.len()) else {
            self.abort("an all-gather of more than 2 GiB from one rank", 2)
        };
        let _held = self.universe.lock().expect("MPI lock");
        let world = SimpleCommunicator::world();
        let mut counts = vec![0i32; self.size];
        mpi::request::scope(|scope| {
            let request = world.immediate_all_gather_into(scope, &len, &mut counts[..]);
            self.wait(&world, "an all-gather's sizes", request);
        });
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |acc, &c| {
                let at = *acc;
                *acc += c;
                Some(at)
            })
            .collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut buf = vec![0u8; total];
        if total > 0 {
            let mut partition = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
            mpi::request::scope(|scope| {
                let request = world.immediate_all_gather_varcount_into(scope, mine, &mut partition);
                self.wait(&world, "an all-gather", request);
            });
        }
        counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| buf[d as usize..(d + c) as usize].to_vec())
            .collect()
    }

    fn broadcast(&self, bytes: &mut Vec<u8>, root: usize) {
        let _held = self.universe.lock().expect("MPI lock");
        let world = SimpleCommunicator::world();
        let mut len = bytes.len() as u64;
        let root_process = world.process_at_rank(root as i32);
        mpi::request::scope(|scope| {
            let request = root_process.immediate_broadcast_into(scope, &mut len);
            self.wait(&world, "a broadcast's size", request);
        });
        bytes.resize(len as usize, 0);
        if bytes.is_empty() {
            // Open MPI refuses a broadcast of nothing from an empty vector's pointer.
            return;
        }
        mpi::request::scope(|scope| {
            let request = root_process.immediate_broadcast_into(scope, &mut bytes[..]);
            self.wait(&world, "a broadcast", request);
        });
    }

    fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    fn barrier(&self) {
        let _held = self.universe.lock().expect("MPI lock");
        let world = SimpleCommunicator::world();
        let request = world.immediate_barrier();
        self.wait(&world, "a barrier", request);
    }

    fn abort(&self, message: &str, code: i32) -> ! {
        eprintln!("error: {message}");
        // No lock: the job ends whatever another thread is doing.
        SimpleCommunicator::world().abort(code)
    }
}
