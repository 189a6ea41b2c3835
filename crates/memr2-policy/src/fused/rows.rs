//! Appending to the key/value cache in place on the CPU backend.
//!
//! Concatenating a decoding step's keys to the cache copies the whole cache, every layer,
//! every step: at batch 32 and a few hundred positions, megabytes a step in freshly
//! allocated buffers. Here a layer's keys live in a buffer with room to grow along the
//! sequence axis (`[batch, capacity, heads, dim]`, doubled when full), a step writes only its
//! own rows into it, and attention reads the filled part as a view whose batch stride is the
//! buffer's (module `attention`). The buffer is written only while nothing else holds it;
//! otherwise it is copied first, so a view handed out earlier never changes.

use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

/// The smallest capacity a buffer is given, in positions.
const MIN_CAPACITY: usize = 64;

/// Appends `new` `[batch, added, heads, dim]` after the first `len` positions of `buffer`
/// (`[batch, capacity, heads, dim]`, `capacity >= len`); returns the buffer to keep and a view
/// of its first `len + added` positions. A new buffer has room for `reserve` positions when
/// that is enough, else for twice what it must hold.
pub(super) fn append(
    buffer: Option<Tensor<Flex, 4>>,
    len: usize,
    new: Tensor<Flex, 4>,
    reserve: usize,
) -> (Tensor<Flex, 4>, Tensor<Flex, 4>) {
    let [batch, added, heads, dim] = new.dims();
    let (row, total) = (heads * dim, len + added);
    let new = new.into_primitive().tensor().to_contiguous();
    let old = buffer.map(|b| b.into_primitive().tensor());
    if let Some(old) = &old {
        let shape = old.layout().shape();
        assert!(
            [shape[0], shape[2], shape[3]] == [batch, heads, dim] && shape[1] >= len,
            "cache rows: a buffer of shape {shape:?} for {len} positions of [{batch}, _, {heads}, {dim}]"
        );
    }
    let fits = |b: &FlexTensor| {
        b.layout().shape()[1] >= total
            && b.is_contiguous()
            && b.layout().start_offset() == 0
            && b.dtype() == new.dtype()
    };
    let mut buffer = match old {
        Some(mut b) if fits(&b) => {
            if b.try_storage_mut::<f32>().is_some() {
                b
            } else {
                grown(&b, len, total, reserve)
            }
        }
        Some(b) => grown(&b, len, total, reserve),
        None => grown(&empty([batch, 0, heads, dim]), 0, total, reserve),
    };
    let capacity = buffer.layout().shape()[1];
    let src: &[f32] = new.storage();
    let dst = buffer.try_storage_mut::<f32>().expect("the buffer is ours alone");
    for b in 0..batch {
        let at = (b * capacity + len) * row;
        dst[at..at + added * row].copy_from_slice(&src[b * added * row..(b + 1) * added * row]);
    }
    let buffer = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(buffer));
    let view = buffer.clone().slice([0..batch, 0..total, 0..heads, 0..dim]);
    (buffer, view)
}

fn empty(shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(Vec::<f32>::new(), shape))
}

/// A fresh buffer of `old`'s batch and heads with room for `reserve` positions if that holds
/// `total`, else for `2 * total` (at least [`MIN_CAPACITY`]), holding `old`'s first `len`.
fn grown(old: &FlexTensor, len: usize, total: usize, reserve: usize) -> FlexTensor {
    let old = old.to_contiguous();
    let shape = old.layout().shape();
    let [batch, old_capacity, heads, dim] = [shape[0], shape[1], shape[2], shape[3]];
    let capacity = if reserve >= total {
        reserve
    } else {
        (2 * total).max(MIN_CAPACITY)
    };
    let row = heads * dim;
    let mut data = vec![0.0_f32; batch * capacity * row];
    let src: &[f32] = old.storage();
    for b in 0..batch {
        let (from, to) = (b * old_capacity * row, b * capacity * row);
        data[to..to + len * row].copy_from_slice(&src[from..from + len * row]);
    }
    FlexTensor::from_data(TensorData::new(data, [batch, capacity, heads, dim]))
}
