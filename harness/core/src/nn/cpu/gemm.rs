//! A bounds-checked front for f32 matrix products given by (rows, cols, row stride, column
//! stride) over slices: the fixed-order kernel of [`super::fixed_gemm`] under the default fixed
//! numerics, `gemm::gemm` under `PROTBENCH_NUMERICS=fast` ([`super::numerics`]).
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use super::fixed_gemm;
use super::numerics::Numerics;

/// A read-only strided matrix view.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// `rows x cols` with rows `rs >= cols` values apart (a block of a wider row-major matrix).
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// One past the largest index the view reads.
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// `dst = a x b` (or `dst += a x b` with `accumulate`), `dst` row-major `a.rows x b.cols`.
/// `threads > 1` lets gemm split the product over rayon's pool; kernels that already run one
/// product per thread pass 1.
///
/// # Panics
/// On mismatched shapes or views that reach past their slices: internal invariants of the
/// callers, checked here because gemm itself reads raw pointers.
pub(crate) fn sgemm(dst: &mut [f32], a: Mat<'_>, b: Mat<'_>, accumulate: bool, threads: usize) {
    sgemm_strided(dst, b.cols, a, b, accumulate, threads);
}

/// `dst = a x b` into uninitialised memory: every value of `dst[..a.rows * b.cols]` is written
/// (gemm does not read the destination when it does not accumulate).
///
/// # Panics
/// As [`sgemm`].
pub(crate) fn sgemm_into(dst: &mut [MaybeUninit<f32>], a: Mat<'_>, b: Mat<'_>, threads: usize) {
    if a.cols == 0 {
        check(dst.len(), b.cols, &a, &b);
        for v in &mut dst[..a.rows * b.cols] {
            v.write(0.0);
        }
        return;
    }
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the slice is uniquely borrowed and
    // holds `dst.len()` values; with `accumulate == false` and k > 0 gemm writes every one of
    // the m x n destination values and reads none.
    unsafe {
        product(
            dst.as_mut_ptr().cast(),
            dst.len(),
            b.cols,
            a,
            b,
            false,
            threads,
        )
    }
}

/// `dst = a_1 x b_1 + a_2 x b_2 + ...` into uninitialised memory (`dst` row-major
/// `a.rows x b.cols`, the same for every term): the first product writes every value, the others
/// add onto it. A convolution split by kernel row sums one product per row this way.
///
/// # Panics
/// As [`sgemm`], and when `terms` is empty or its shapes differ.
pub(crate) fn sgemm_sum_into<'a>(
    dst: &mut [MaybeUninit<f32>],
    terms: impl IntoIterator<Item = (Mat<'a>, Mat<'a>)>,
    threads: usize,
) {
    let mut terms = terms.into_iter();
    let (a, b) = terms
        .next()
        .expect("sgemm_sum_into needs at least one product");
    let (m, n) = (a.rows, b.cols);
    sgemm_into(dst, a, b, threads);
    // SAFETY: the first product wrote every one of the `m x n` values of `dst` (sgemm_into's
    // contract), so they are initialised and can be read as f32; the slice stays uniquely
    // borrowed.
    let dst: &mut [f32] =
        unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), m * n) };
    for (a, b) in terms {
        assert!(
            a.rows == m && b.cols == n,
            "sgemm_sum_into terms differ in shape"
        );
        sgemm(dst, a, b, true, threads);
    }
}

/// `dst = a x b` (or `+=`) where the destination's rows lie `dst_rs` values apart (a block of a
/// wider matrix): `dst[i * dst_rs + j]` for `i < a.rows`, `j < b.cols`; values between the rows
/// are not touched.
///
/// # Panics
/// As [`sgemm`], and when `dst_rs < b.cols`.
pub(crate) fn sgemm_strided(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
    threads: usize,
) {
    assert!(dst_rs >= b.cols, "gemm destination rows overlap");
    if a.cols == 0 {
        check(dst.len(), dst_rs, &a, &b);
        if !accumulate {
            for i in 0..a.rows {
                dst[i * dst_rs..i * dst_rs + b.cols].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: `dst` is an initialised, uniquely borrowed slice of `dst.len()` values.
    unsafe {
        product(
            dst.as_mut_ptr(),
            dst.len(),
            dst_rs,
            a,
            b,
            accumulate,
            threads,
        )
    }
}

/// The shape and bounds checks of a product into a destination of `dst_len` values whose rows
/// are `dst_rs` apart.
fn check(dst_len: usize, dst_rs: usize, a: &Mat<'_>, b: &Mat<'_>) {
    assert_eq!(b.rows, a.cols, "gemm inner dimensions differ");
    let extent = if a.rows == 0 || b.cols == 0 {
        0
    } else {
        (a.rows - 1) * dst_rs + b.cols
    };
    assert!(dst_len >= extent, "gemm destination too small");
    assert!(
        a.extent() <= a.data.len() && b.extent() <= b.data.len(),
        "gemm view out of bounds"
    );
}

/// Runs gemm for a product with k > 0 into a destination whose rows are `dst_rs >= b.cols`
/// values apart.
///
/// # Safety
/// `dst` must be valid for writes of `dst_len` f32 values (and for reads, initialised, when
/// `accumulate`), and alias neither operand.
unsafe fn product(
    dst: *mut f32,
    dst_len: usize,
    dst_rs: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
    threads: usize,
) {
    check(dst_len, dst_rs, &a, &b);
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    debug_assert!(k > 0);
    if Numerics::selected() == Numerics::Fixed {
        // SAFETY: as for gemm below (the same checks, the same contract).
        unsafe {
            fixed_gemm::product(
                dst,
                dst_rs,
                a,
                b,
                accumulate,
                threads,
                fixed_gemm::Path::selected(),
            )
        };
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index gemm touches is inside the buffers: dst covers m rows of n values,
    // `dst_rs` apart (checked above against `dst_len`, which the caller vouches for), and the
    // extents of `a` and `b` (largest row and column offsets) are within their slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `dst = src^T` for a row-major `rows x cols` matrix (`dst` is `cols x rows`), in cache-sized
/// tiles so that neither side is walked with a large stride for long.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 16;
    assert!(
        src.len() >= rows * cols && dst.len() >= rows * cols,
        "transpose out of bounds"
    );
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for r in r0..r1 {
                let row = &src[r * cols + c0..r * cols + c1];
                for (j, &v) in row.iter().enumerate() {
                    dst[(c0 + j) * rows + r] = v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_value_to_its_mirror() {
        for (rows, cols) in [(1, 1), (3, 5), (16, 16), (17, 33), (64, 9)] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let mut dst = vec![-1f32; rows * cols];
            transpose(&src, rows, cols, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at {r},{c}"
                    );
                }
            }
        }
    }
}
