//! im2col and its adjoint col2im for one image, square kernels, symmetric zero padding.
//!
//! The column matrix has one row per (channel, kernel row, kernel column) and one column per
//! output position, row-major, so that a convolution is `W[O, C*k*k] x cols[C*k*k, Ho*Wo]`.
//! Every (row, output row) pair is one contiguous run of `wo` values: the range of output
//! columns whose input column falls inside the image is computed once per kernel column, so the
//! inner loops have no bounds tests; for stride 1 they are plain slice copies (memcpy) or adds.

/// Sizes of one convolution, per image and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geom {
    /// Input channels (of the group).
    pub c: usize,
    /// Input height and width.
    pub h: usize,
    pub w: usize,
    /// Kernel side.
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// Output height and width.
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    /// Rows of the column matrix.
    pub fn rows(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Columns of the column matrix (output positions).
    pub fn cols(&self) -> usize {
        self.ho * self.wo
    }

    /// Output positions `lo..hi` along one axis of length `out` whose input index
    /// `o * stride + tap - pad` lies in `0..len`.
    fn valid(&self, tap: usize, len: usize, out: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = if tap >= self.pad {
            0
        } else {
            (self.pad - tap).div_ceil(s)
        };
        let hi = if len + self.pad > tap {
            ((len - 1 + self.pad - tap) / s + 1).min(out)
        } else {
            0
        };
        (lo.min(out), hi.max(lo.min(out)))
    }

    /// Whether the convolution reads the image as it is (1x1, stride 1, no padding): the column
    /// matrix is then the image itself.
    pub fn is_identity(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
}

/// Fills `cols` (`g.rows() x g.cols()`) from the image `x` (`g.c x g.h x g.w`).
pub(crate) fn im2col(x: &[f32], g: &Geom, cols: &mut [f32]) {
    let (h, w, k, s, ho, wo) = (g.h, g.w, g.k, g.stride, g.ho, g.wo);
    let plane = h * w;
    let ncols = ho * wo;
    for (ci, xp) in x.chunks_exact(plane).take(g.c).enumerate() {
        for ki in 0..k {
            let (oh_lo, oh_hi) = g.valid(ki, h, ho);
            for kj in 0..k {
                let (lo, hi) = g.valid(kj, w, wo);
                let r = (ci * k + ki) * k + kj;
                let row = &mut cols[r * ncols..(r + 1) * ncols];
                // Output rows whose input row is padding.
                row[..oh_lo * wo].fill(0.0);
                row[oh_hi * wo..].fill(0.0);
                if lo == hi {
                    row[oh_lo * wo..oh_hi * wo].fill(0.0);
                    continue;
                }
                for oh in oh_lo..oh_hi {
                    let ih = oh * s + ki - g.pad;
                    let dst = &mut row[oh * wo..(oh + 1) * wo];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let iw0 = lo * s + kj - g.pad;
                    let src = &xp[ih * w..(ih + 1) * w];
                    if s == 1 {
                        dst[lo..hi].copy_from_slice(&src[iw0..iw0 + hi - lo]);
                    } else {
                        for (d, v) in dst[lo..hi].iter_mut().zip(src[iw0..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds the column matrix `cols` back onto the image gradient `dx` (`g.c x g.h x g.w`): the
/// adjoint of [`im2col`]. `dx` must be zeroed (or hold gradient to add to).
pub(crate) fn col2im(cols: &[f32], g: &Geom, dx: &mut [f32]) {
    let (h, w, k, s, ho, wo) = (g.h, g.w, g.k, g.stride, g.ho, g.wo);
    let plane = h * w;
    let ncols = ho * wo;
    for (ci, dp) in dx.chunks_exact_mut(plane).take(g.c).enumerate() {
        for ki in 0..k {
            let (oh_lo, oh_hi) = g.valid(ki, h, ho);
            for kj in 0..k {
                let (lo, hi) = g.valid(kj, w, wo);
                if lo == hi {
                    continue;
                }
                let r = (ci * k + ki) * k + kj;
                let row = &cols[r * ncols..(r + 1) * ncols];
                for oh in oh_lo..oh_hi {
                    let ih = oh * s + ki - g.pad;
                    let src = &row[oh * wo + lo..oh * wo + hi];
                    let iw0 = lo * s + kj - g.pad;
                    let dst = &mut dp[ih * w..(ih + 1) * w];
                    if s == 1 {
                        for (d, v) in dst[iw0..iw0 + hi - lo].iter_mut().zip(src) {
                            *d += *v;
                        }
                    } else {
                        for (d, v) in dst[iw0..].iter_mut().step_by(s).zip(src) {
                            *d += *v;
                        }
                    }
                }
            }
        }
    }
}
