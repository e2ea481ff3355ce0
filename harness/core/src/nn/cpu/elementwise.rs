//! Parallel element-wise maps into fresh, unzeroed buffers.
//!
//! Activations at batch 128 are megabytes, far beyond the caches, so an element-wise op costs
//! what its memory streams cost. Allocating the output with `vec![0.0; n]` adds a whole extra
//! write stream (glibc's `calloc` clears reused memory); these maps write every output value
//! exactly once instead, split over rayon's threads.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise rayon, small enough to split a CIFAR
/// activation over both cores.
const CHUNK: usize = 1 << 15;

/// Builds a vector of `len` values, each chunk filled by `fill(start, chunk)`, which writes
/// every value of `chunk` (checked: it returns how many it wrote).
fn build(len: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) -> usize + Sync) -> Vec<f32> {
    let fill_chunks = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, chunk)| {
                let n = chunk.len();
                assert_eq!(
                    fill(i * CHUNK, chunk),
                    n,
                    "element-wise map left values unset"
                );
            })
    };
    // SAFETY: every chunk of the `len` values is written in full (asserted per chunk; a panic
    // there propagates out of `filled_by` before it sets the length).
    unsafe { filled_by(len, fill_chunks).0 }
}

/// A vector of `len` values that `fill` writes through a view of the unused capacity (for
/// kernels whose loops cover every output value, e.g. one task per channel).
///
/// # Safety
/// `fill` must write every one of the `len` values of the slice it is given.
pub(crate) unsafe fn filled_by<R>(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]) -> R,
) -> (Vec<f32>, R) {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let r = fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller guarantees that `fill` wrote every value.
    unsafe { out.set_len(len) };
    (out, r)
}

/// `f(a[i])` for every `i`.
pub(crate) fn map1(a: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    build(a.len(), |start, out| {
        let a = &a[start..start + out.len()];
        out.iter_mut().zip(a).map(|(o, &x)| o.write(f(x))).count()
    })
}

/// `f(a[i], b[i])` for every `i`.
///
/// # Panics
/// If the slices differ in length (an internal invariant of the callers).
pub(crate) fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "element-wise operands differ in length");
    build(a.len(), |start, out| {
        let r = start..start + out.len();
        out.iter_mut()
            .zip(&a[r.clone()])
            .zip(&b[r])
            .map(|((o, &x), &y)| o.write(f(x, y)))
            .count()
    })
}

/// `f(a[i], b[i], c[i])` for every `i`.
///
/// # Panics
/// If the slices differ in length (an internal invariant of the callers).
pub(crate) fn map3(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    assert!(
        a.len() == b.len() && b.len() == c.len(),
        "element-wise operands differ in length"
    );
    build(a.len(), |start, out| {
        let r = start..start + out.len();
        out.iter_mut()
            .zip(&a[r.clone()])
            .zip(&b[r.clone()])
            .zip(&c[r])
            .map(|(((o, &x), &y), &z)| o.write(f(x, y, z)))
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_write_every_value_across_chunk_boundaries() {
        for len in [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 3] {
            let a: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let b: Vec<f32> = (0..len).map(|i| (i % 7) as f32).collect();
            let c: Vec<f32> = (0..len).map(|i| (i % 3) as f32).collect();
            let y1 = map1(&a, |x| x * 2.0);
            let y2 = map2(&a, &b, |x, y| x - y);
            let y3 = map3(&a, &b, &c, |x, y, z| x + y * z);
            assert_eq!(y1.len(), len);
            for i in 0..len {
                assert_eq!(y1[i], a[i] * 2.0);
                assert_eq!(y2[i], a[i] - b[i]);
                assert_eq!(y3[i], a[i] + b[i] * c[i]);
            }
        }
    }
}
