//! Dense two-dimensional products on the CPU backend, cut over rayon's threads by us.
//!
//! flex hands a large product to `gemm` with `gemm`'s own threading, which at the model's
//! shapes (thousands of rows by 128-1024 columns, and the weights' gradients `x^T dy` with a
//! long inner dimension and a small output) got 1.06-1.6x from a second core where PyTorch
//! gets 1.6-2.1x (docs/PERF.md, "Against PyTorch"). Here the output's rows are cut into one
//! band per thread, and each band is one single-threaded `gemm` call reading its operands in
//! place through their strides: the rows of `x w` and of `dy w^T`. No band shares an output
//! element with another, so every element is the same sum in the same order as in one call.
//! A product whose inner dimension is long against its output (a weight's gradient) is
//! instead cut along that dimension into two partial products that are added ([`product`]).
//! Where either cut falls depends on the shape alone, never on the number of threads, so the
//! result is the same bits on any number of threads (tested).
//!
//! `gemm_call` is the one call into `gemm` that the fused operations share; it checks the
//! operands' strides and sizes against their slices before the call. The products' outputs
//! are written by `gemm` into memory not zero-filled first.

use std::mem::MaybeUninit;

use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::FlexAutodiff;

/// Products of fewer multiply-adds run on the calling thread: handing them to the pool costs
/// more than it saves (flex's own threshold).
const PARALLEL_OPS: usize = 192 * 192 * 192;

/// The fewest output rows a thread's band gets; a product with fewer rows per thread is left
/// to `gemm`'s own threading, which also splits columns (a decoding step's LM head at a large
/// vocabulary: a few rows, a hundred thousand columns).
const MIN_BAND_ROWS: usize = 16;

/// `dst[m, n] (+)= lhs[m, k] x rhs[k, n]` on the calling thread, each operand given as a slice
/// with its row and column strides (in elements); `accumulate` adds to `dst` instead of
/// overwriting it.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_into(
    mnk: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    let dst = Dst::Init { dst, accumulate };
    gemm_call(
        mnk,
        dst,
        dst_rs,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
        gemm::Parallelism::None,
    );
}

/// Where a product goes: initialised elements, overwritten or added to, or elements not yet
/// initialised, which are only ever written.
enum Dst<'a> {
    Init { dst: &'a mut [f32], accumulate: bool },
    Uninit(&'a mut [MaybeUninit<f32>]),
}

/// The product into `dst` with `gemm`'s threading as given. The strides and sizes are checked
/// against the slices' lengths, which is what makes the call into `gemm` sound. With `k` 0 the
/// rows are zeroed (or left as they are, when adding).
#[allow(clippy::too_many_arguments, unsafe_code)]
fn gemm_call(
    (m, n, k): (usize, usize, usize),
    dst: Dst<'_>,
    dst_rs: usize,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (ptr, len, accumulate) = match dst {
        Dst::Init { dst, accumulate } => (dst.as_mut_ptr(), dst.len(), accumulate),
        Dst::Uninit(dst) => (dst.as_mut_ptr().cast::<f32>(), dst.len(), false),
    };
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, dst_rs, n, 1) < len, "matmul: dst too short");
    assert!(m == 1 || dst_rs >= n, "matmul: dst rows overlap");
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                // SAFETY: the row lies inside `dst` (checked above); writing zeros through the
                // pointer initialises elements that may not have been.
                unsafe { std::ptr::write_bytes(ptr.add(row * dst_rs), 0, n) };
            }
        }
        return;
    }
    assert!(last(m, lhs_rs, k, lhs_cs) < lhs.len(), "matmul: lhs too short");
    assert!(last(k, rhs_rs, n, rhs_cs) < rhs.len(), "matmul: rhs too short");
    // SAFETY: every element the strides reach lies inside its slice (checked above), `dst`
    // is borrowed mutably and does not overlap the shared `lhs` and `rhs`, and its rows do
    // not overlap each other (checked above). `gemm` reads `dst` only when `accumulate` is
    // set, which an uninitialised `dst` never is; otherwise it writes every element of the
    // `m x n` block.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            ptr,
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A two-dimensional f32 operand read in place: its storage from its first element on, and
/// its row and column strides.
#[derive(Debug, Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Operand<'a> {
    /// `t` (two-dimensional, f32, no negative stride: see [`readable`]).
    fn of(t: &'a FlexTensor) -> Self {
        let layout = t.layout();
        let strides = layout.strides();
        Self {
            data: &t.storage::<f32>()[layout.start_offset()..],
            rs: strides[0] as usize,
            cs: strides[1] as usize,
        }
    }

    /// The transposed view.
    fn t(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// The view from column `col` on (empty past the end).
    fn cols_after(self, col: usize) -> Self {
        Self {
            data: self.data.get(col * self.cs..).unwrap_or_default(),
            ..self
        }
    }

    /// The view from row `row` on (empty past the end: an operand with no columns).
    fn rows_after(self, row: usize) -> Self {
        Self {
            data: self.data.get(row * self.rs..).unwrap_or_default(),
            ..self
        }
    }
}

/// `t` as is when its strides can be handed to `gemm`, otherwise a contiguous copy.
fn readable(t: FlexTensor) -> FlexTensor {
    if t.layout().has_positive_strides() {
        t
    } else {
        t.to_contiguous()
    }
}

/// How many bands the output of `[m, k] x [k, n]` is cut into on `threads` threads: one per
/// thread for a product large enough, none (0) when `gemm` should thread it itself, 1 for the
/// calling thread alone.
fn bands(m: usize, n: usize, k: usize, threads: usize) -> usize {
    if m.saturating_mul(n).saturating_mul(k) < PARALLEL_OPS || threads <= 1 {
        1
    } else if m < 2 * MIN_BAND_ROWS {
        0
    } else {
        threads.min(m / MIN_BAND_ROWS)
    }
}

/// The shortest inner dimension that is cut in two ([`product`]).
const MIN_SPLIT_INNER: usize = 1024;

/// `lhs [m, k] x rhs [k, n]` as a new row-major `[m, n]` buffer, on rayon's pool.
///
/// A product whose inner dimension is long against its output (the weights' gradients `x^T
/// dy`, summed over thousands of rows) is cut in two along it: each half is a product of its
/// own, on half the threads, and the two partial outputs are added. Each half then reads half
/// of both operands, where bands of output rows would each read all of `dy`; on 2 cores that
/// ran these products 1.05-1.3x faster. Where the cut falls depends on the shape alone, so
/// the result is the same bits on any number of threads. Every other product is cut into
/// bands of output rows ([`bands`]).
fn product((m, k, n): (usize, usize, usize), lhs: Operand<'_>, rhs: Operand<'_>) -> Vec<f32> {
    let threads = rayon::current_num_threads();
    if k >= MIN_SPLIT_INNER && k >= m.max(n) && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_OPS {
        let h = k / 2;
        let half = threads.div_ceil(2);
        let (mut first, second) = rayon::join(
            || product_in_bands((m, h, n), lhs, rhs, bands(m, n, h, half)),
            || {
                let (lhs, rhs) = (lhs.cols_after(h), rhs.rows_after(h));
                product_in_bands((m, k - h, n), lhs, rhs, bands(m, n, k - h, half))
            },
        );
        first.iter_mut().zip(&second).for_each(|(a, b)| *a += b);
        return first;
    }
    product_in_bands((m, k, n), lhs, rhs, bands(m, n, k, threads))
}

/// `lhs [m, k] x rhs [k, n]` as a new row-major `[m, n]` buffer, its rows cut into `bands`
/// bands of about equal height, each one single-threaded `gemm` call run on rayon's pool
/// (`bands` 0: one call threaded by `gemm`). The buffer is not zero-filled first: `gemm`
/// writes every element (zero-filling a reused heap block was about 5% of a training step).
#[allow(unsafe_code)]
fn product_in_bands(
    (m, k, n): (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    bands: usize,
) -> Vec<f32> {
    let len = m * n;
    let mut out = Vec::with_capacity(len);
    let call = |dst: &mut [MaybeUninit<f32>], lhs: Operand<'_>, parallelism| {
        let rows = dst.len() / n;
        let dst = Dst::Uninit(dst);
        gemm_call(
            (rows, n, k),
            dst,
            n,
            lhs.data,
            (lhs.rs, lhs.cs),
            rhs.data,
            (rhs.rs, rhs.cs),
            parallelism,
        );
    };
    if len > 0 {
        let dst = &mut out.spare_capacity_mut()[..len];
        match bands {
            0 => call(dst, lhs, gemm::Parallelism::Rayon(0)),
            1 => call(dst, lhs, gemm::Parallelism::None),
            bands => {
                let height = m.div_ceil(bands);
                dst.par_chunks_mut(height * n)
                    .enumerate()
                    .for_each(|(i, dst)| call(dst, lhs.rows_after(i * height), gemm::Parallelism::None));
            }
        }
    }
    // SAFETY: the capacity is `len`, and the bands (whole rows of `n` elements each, covering
    // all `m` rows) were each written whole by one call above (`gemm_call` writes every element
    // of its block, zeros when `k` is 0), or `len` is 0.
    unsafe { out.set_len(len) };
    out
}

/// `lhs [m, k] x rhs [k, n]` on flex, cut as [`product`] says.
fn forward(lhs: &FlexTensor, rhs: &FlexTensor) -> FlexTensor {
    let ([m, k], n) = (dims(lhs), dims(rhs)[1]);
    let out = product((m, k, n), Operand::of(lhs), Operand::of(rhs));
    FlexTensor::from_data(TensorData::new(out, [m, n]))
}

fn dims(t: &FlexTensor) -> [usize; 2] {
    let shape = t.layout().shape();
    [shape[0], shape[1]]
}

/// The product on `Flex` without autodiff.
pub(super) fn inference(lhs: Tensor<Flex, 2>, rhs: Tensor<Flex, 2>) -> Tensor<Flex, 2> {
    let [lhs, rhs] = [lhs, rhs].map(|t| readable(t.into_primitive().tensor()));
    Tensor::from_primitive(TensorPrimitive::Float(forward(&lhs, &rhs)))
}

/// The gradients of `lhs rhs`: `g rhs^T` and `lhs^T g`, each split the same way.
#[derive(Debug)]
struct ProductBackward;

impl Backward<Flex, 2> for ProductBackward {
    /// The operands as the forward pass read them (views, not copies).
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (lhs, rhs) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let ([m, k], n) = (dims(&lhs), dims(&rhs)[1]);
        let g = Operand::of(&grad);
        let [lhs_node, rhs_node] = ops.parents;
        if let Some(node) = lhs_node {
            let d = product((m, n, k), g, Operand::of(&rhs).t());
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(d, [m, k])));
        }
        if let Some(node) = rhs_node {
            let d = product((k, m, n), Operand::of(&lhs).t(), g);
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(d, [k, n])));
        }
    }
}

/// The node on the autodiff backend.
pub(super) fn autodiff(
    lhs: Tensor<FlexAutodiff, 2>,
    rhs: Tensor<FlexAutodiff, 2>,
) -> Tensor<FlexAutodiff, 2> {
    let (lhs, rhs) = (lhs.into_primitive().tensor(), rhs.into_primitive().tensor());
    let (l, r) = (readable(lhs.primitive), readable(rhs.primitive));
    let out = forward(&l, &r);
    let out = match ProductBackward
        .prepare::<NoCheckpointing>([lhs.node.clone(), rhs.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((l, r), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic `[rows, cols]` matrix with values of both signs and no pattern that
    /// a wrong stride could reproduce.
    fn matrix(rows: usize, cols: usize, salt: u32) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let h = (i as u32 ^ salt).wrapping_mul(2_654_435_761).rotate_left(13);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every band count gives the bits of the single call, for plain and transposed operands
    /// and heights that do not divide evenly.
    #[test]
    fn bands_change_no_bit() {
        for (m, k, n) in [(1, 3, 2), (5, 0, 3), (37, 64, 20), (200, 33, 129), (513, 128, 96)] {
            let a = matrix(m, k, 1);
            let at = matrix(k, m, 2); // read transposed: `[m, k]` with strides (1, m)
            let b = matrix(k, n, 3);
            let bt = matrix(n, k, 4);
            let plain = (
                Operand {
                    data: &a,
                    rs: k,
                    cs: 1,
                },
                Operand {
                    data: &b,
                    rs: n,
                    cs: 1,
                },
            );
            let transposed = (
                Operand {
                    data: &at,
                    rs: 1,
                    cs: m,
                },
                Operand {
                    data: &bt,
                    rs: 1,
                    cs: k,
                },
            );
            for (lhs, rhs) in [plain, transposed] {
                let one = product_in_bands((m, k, n), lhs, rhs, 1);
                // Against a plain triple loop (to rounding), then band counts (bit for bit).
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 = (0..k)
                            .map(|p| lhs.data[i * lhs.rs + p * lhs.cs] * rhs.data[p * rhs.rs + j * rhs.cs])
                            .sum();
                        let got = one[i * n + j];
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{m}x{k}x{n} [{i},{j}]: {got} != {want}"
                        );
                    }
                }
                for bands in [0, 2, 3, 7] {
                    let split = product_in_bands((m, k, n), lhs, rhs, bands.min(m.max(1)));
                    assert!(
                        split.iter().zip(&one).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{m}x{k}x{n} in {bands} bands differs from one call"
                    );
                }
            }
        }
    }

    /// Small products stay on the calling thread, tall ones get one band per thread, short and
    /// wide ones go to gemm's threading.
    #[test]
    fn bands_follow_the_shape() {
        assert_eq!(bands(32, 128, 128, 2), 1);
        assert_eq!(bands(6144, 128, 128, 1), 1);
        assert_eq!(bands(6144, 128, 128, 2), 2);
        assert_eq!(bands(6144, 128, 128, 16), 16);
        assert_eq!(bands(40, 128, 4096, 16), 2);
        assert_eq!(bands(8, 896, 151_936, 2), 0);
    }

    /// A product cut along its inner dimension (a weight's gradient) equals one call to
    /// rounding, and gives the same bits on 1, 2 and 3 threads; so does one cut into bands.
    #[test]
    fn products_are_the_same_bits_on_any_number_of_threads() {
        for (m, k, n) in [(96, 2500, 80), (700, 64, 300)] {
            let at = matrix(k, m, 5); // `[m, k]` read transposed, as `x^T` in `x^T dy`
            let b = matrix(k, n, 6);
            let (lhs, rhs) = (
                Operand {
                    data: &at,
                    rs: 1,
                    cs: m,
                },
                Operand {
                    data: &b,
                    rs: n,
                    cs: 1,
                },
            );
            let one = product_in_bands((m, k, n), lhs, rhs, 1);
            let on = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| product((m, k, n), lhs, rhs))
            };
            let single = on(1);
            for (x, y) in single.iter().zip(&one) {
                assert!((x - y).abs() <= 1e-3 * (1.0 + y.abs()), "{m}x{k}x{n}: {x} != {y}");
            }
            for threads in [2, 3] {
                let other = on(threads);
                assert!(
                    other.iter().zip(&single).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{m}x{k}x{n} on {threads} threads differs from 1 thread"
                );
            }
        }
    }
}
