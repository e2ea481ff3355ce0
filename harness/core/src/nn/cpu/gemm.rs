//! A bounds-checked wrapper over `gemm::gemm` for f32 matrices given by (rows, cols, row stride,
//! column stride) over slices; the only `unsafe` of the convolution kernels.
#![allow(unsafe_code)]

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

    /// The transpose (a view; nothing moves: gemm reads any strides).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
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
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm inner dimensions differ");
    assert!(dst.len() >= m * n, "gemm destination too small");
    assert!(
        a.extent() <= a.data.len() && b.extent() <= b.data.len(),
        "gemm view out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index gemm touches is inside the slices: dst covers m x n row-major
    // (checked above), and the extents of `a` and `b` (largest row and column offsets) are
    // within their slices. `dst` is a unique borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
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
