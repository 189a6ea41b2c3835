//! Order-preserving parallel map over scoped threads (crossbeam), for the CPU side of a
//! rollout: tokenizing prompts, decoding completions, retrieval, scoring.
//!
//! The model's forward passes mostly keep one core busy at the tiny sizes, so the CPU work
//! around them runs on the others. Small inputs stay on the calling thread, where spawning
//! would cost more than it saves.

use std::num::NonZeroUsize;

/// Items below which [`map`] does not spawn.
const MIN_PARALLEL: usize = 8;

/// The machine's cores (1 when it cannot tell).
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism()
        .map(NonZeroUsize::get)
        .unwrap_or(1)
}

/// `items.iter().map(f).collect()`, split over the machine's cores in contiguous chunks; the
/// output order is the input order, so results do not depend on the thread count.
pub fn map<T, R, F>(items: &[T], f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let threads = threads().min(items.len() / MIN_PARALLEL.max(1)).max(1);
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    crossbeam::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move |_| part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_matches_the_sequential_map() {
        for n in [0, 1, 7, 8, 9, 100, 1001] {
            let items: Vec<u64> = (0..n).collect();
            let square = |x: &u64| x * x + 1;
            assert_eq!(map(&items, square), items.iter().map(square).collect::<Vec<_>>());
        }
    }
}
