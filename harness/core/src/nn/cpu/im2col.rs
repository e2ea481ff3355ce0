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

    /// Stride 1 with "same" padding (output as wide as the input): a row of the column matrix
    /// is then the input plane shifted by one offset, so it moves as one contiguous run.
    pub(crate) fn is_shift(&self) -> bool {
        self.stride == 1 && self.wo == self.w && self.ho == self.h
    }

    /// For row (ki, kj) of a shift geometry: the offset from output index to input index and
    /// the run `q0..q1` of output indices between the first and the last valid one, or `None`
    /// when every output reads padding. Inside the run, the output columns outside `lo..hi` of
    /// each row read the neighbouring input row and must be treated as padding.
    fn shift_run(&self, ki: usize, kj: usize) -> Option<ShiftRun> {
        let (oh_lo, oh_hi) = self.valid(ki, self.h, self.ho);
        let (lo, hi) = self.valid(kj, self.w, self.wo);
        if oh_lo == oh_hi || lo == hi {
            return None;
        }
        let w = self.w as isize;
        let offset = (ki as isize - self.pad as isize) * w + kj as isize - self.pad as isize;
        Some(ShiftRun {
            q0: oh_lo * self.w + lo,
            q1: (oh_hi - 1) * self.w + hi,
            offset,
            rows: oh_lo..oh_hi,
            lo,
            hi,
        })
    }
}

/// One row of a shift geometry's column matrix, see [`Geom::shift_run`].
struct ShiftRun {
    q0: usize,
    q1: usize,
    offset: isize,
    rows: std::ops::Range<usize>,
    lo: usize,
    hi: usize,
}

impl ShiftRun {
    /// The input indices of the run.
    fn src(&self) -> std::ops::Range<usize> {
        // Both ends are valid input positions (checked by `valid`), so the sums are >= 0.
        self.q0.wrapping_add_signed(self.offset)..self.q1.wrapping_add_signed(self.offset)
    }

    /// Zeroes the wrapped columns (outside `lo..hi`) of every output row of the run in `row`.
    fn clear_wrapped(&self, row: &mut [f32], wo: usize) {
        for oh in self.rows.clone() {
            zero_few(&mut row[oh * wo..oh * wo + self.lo]);
            zero_few(&mut row[oh * wo + self.hi..(oh + 1) * wo]);
        }
    }
}

/// Zeroes a slice that is usually empty or one value long (padding 1) without calling memset,
/// whose call costs more than the store.
#[inline(always)]
pub(crate) fn zero_few(s: &mut [f32]) {
    match s.len() {
        0 => {}
        1 => s[0] = 0.0,
        _ => s.fill(0.0),
    }
}

/// Fills `cols` (`g.rows() x g.cols()`) from the image `x` (`g.c x g.h x g.w`).
pub(crate) fn im2col(x: &[f32], g: &Geom, cols: &mut [f32]) {
    if g.is_shift() {
        return im2col_shift(x, g, cols);
    }
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

/// [`im2col`] for a shift geometry: one contiguous copy per row of the column matrix, then the
/// wrapped columns zeroed (a copy per output row, as the general path does, costs a memcpy
/// call for every 8 to 32 values on CIFAR-sized planes).
fn im2col_shift(x: &[f32], g: &Geom, cols: &mut [f32]) {
    let (plane, k, ncols) = (g.h * g.w, g.k, g.cols());
    for (ci, xp) in x.chunks_exact(plane).take(g.c).enumerate() {
        for ki in 0..k {
            for kj in 0..k {
                let r = (ci * k + ki) * k + kj;
                let row = &mut cols[r * ncols..(r + 1) * ncols];
                let Some(run) = g.shift_run(ki, kj) else {
                    row.fill(0.0);
                    continue;
                };
                row[..run.q0].fill(0.0);
                row[run.q1..].fill(0.0);
                row[run.q0..run.q1].copy_from_slice(&xp[run.src()]);
                run.clear_wrapped(row, g.wo);
            }
        }
    }
}

/// Writes the image gradient `dx` (`g.c x g.h x g.w`, overwritten) from the column matrix
/// `cols`: the adjoint of [`im2col`]. The values of `cols` that [`im2col`] would have read from
/// padding are overwritten with zeros (callers pass scratch they no longer need).
pub(crate) fn col2im(cols: &mut [f32], g: &Geom, dx: &mut [f32]) {
    if g.is_shift() {
        return col2im_shift(cols, g, dx);
    }
    dx[..g.c * g.h * g.w].fill(0.0);
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

/// [`col2im`] for a shift geometry: every row has its padding positions zeroed and is added
/// onto the plane as one contiguous run; the first row with a run is copied instead (with zeros
/// around it), which spares zeroing the plane first and keeps the additions in the same order,
/// so the result is bit for bit that of zeroing and adding.
fn col2im_shift(cols: &mut [f32], g: &Geom, dx: &mut [f32]) {
    let (plane, k, ncols) = (g.h * g.w, g.k, g.cols());
    for (ci, dp) in dx.chunks_exact_mut(plane).take(g.c).enumerate() {
        let mut written = false;
        for ki in 0..k {
            for kj in 0..k {
                let Some(run) = g.shift_run(ki, kj) else {
                    continue;
                };
                let r = (ci * k + ki) * k + kj;
                let row = &mut cols[r * ncols..(r + 1) * ncols];
                run.clear_wrapped(row, g.wo);
                let src = run.src();
                if written {
                    for (d, v) in dp[src].iter_mut().zip(&row[run.q0..run.q1]) {
                        *d += *v;
                    }
                } else {
                    dp[..src.start].fill(0.0);
                    dp[src.end..].fill(0.0);
                    dp[src].copy_from_slice(&row[run.q0..run.q1]);
                    written = true;
                }
            }
        }
        if !written {
            dp.fill(0.0);
        }
    }
}
