//! The input of a stride-1 "same" convolution expanded along the kernel's columns only.
//!
//! im2col copies every input value k*k times (one row per channel, kernel row and kernel
//! column) and col2im adds k*k copies back; on ResNet-20 that copying was about a quarter of a
//! training step. Here each channel is copied k times, once per kernel column `kj`, shifted by
//! `kj - pad` and given `pad` zero rows above and below. In that buffer the row of the column
//! matrix for kernel row `ki` is the same buffer read from `ki * w` on: a kernel row is an
//! offset, not a copy. A convolution is then k products, one per kernel row, each with the
//! buffer as a strided right operand (rows `pitch` apart), summed:
//! `y = sum_ki W_ki[O, C*k] x taps[C*k, h*w @ ki*w]`.
//!
//! Only for stride 1 and padding `(k - 1) / 2`: the output is then as large as the input, and a
//! shift along the flattened plane is a shift in both directions, up to the columns that wrap
//! into the neighbouring row, which are zeroed.

use super::im2col::{Geom, zero_few};

/// The layout of one image's expanded buffer: `c * k` rows of `pitch` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TapRows {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    pad: usize,
}

impl TapRows {
    /// The layout for a convolution, when it is stride 1 with "same" padding and a kernel
    /// larger than 1x1 (a 1x1 convolution reads the image as it is).
    pub fn of(g: &Geom) -> Option<Self> {
        (g.is_shift() && g.k > 1).then_some(Self {
            c: g.c,
            h: g.h,
            w: g.w,
            k: g.k,
            pad: g.pad,
        })
    }

    /// Rows of the buffer (channel, kernel column): the contraction length of one product.
    pub fn rows(&self) -> usize {
        self.c * self.k
    }

    /// Values per row: the plane with `pad` zero rows above and below.
    pub fn pitch(&self) -> usize {
        (self.h + 2 * self.pad) * self.w
    }

    /// Values of the whole buffer.
    pub fn len(&self) -> usize {
        self.rows() * self.pitch()
    }

    /// Output positions (the plane's size).
    pub fn cols(&self) -> usize {
        self.h * self.w
    }

    /// Kernel side: the number of products.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Where kernel row `ki`'s operand starts in the buffer.
    pub fn offset(&self, ki: usize) -> usize {
        ki * self.w
    }

    /// Where the image's rows start within a buffer row (after the top padding).
    fn body(&self) -> usize {
        self.pad * self.w
    }

    /// Output columns `lo..hi` of a row whose input column `x + kj - pad` is inside the image.
    fn valid(&self, kj: usize) -> (usize, usize) {
        let lo = self.pad.saturating_sub(kj).min(self.w);
        let hi = (self.w + self.pad).saturating_sub(kj).min(self.w);
        (lo, hi.max(lo))
    }

    /// Zeroes the columns of a buffer row's body that wrapped into the neighbouring image row.
    fn clear_wrapped(&self, body: &mut [f32], kj: usize) {
        let (lo, hi) = self.valid(kj);
        for row in body.chunks_exact_mut(self.w) {
            zero_few(&mut row[..lo]);
            zero_few(&mut row[hi..]);
        }
    }

    /// Fills `out` (`len()` values, every one written) from the image `x` (`c x h x w`):
    /// `out[(ci*k + kj) * pitch + (r * w + col)] = x[ci][r - pad][col + kj - pad]`, zero
    /// outside the image.
    pub fn expand(&self, x: &[f32], out: &mut [f32]) {
        let (plane, pitch, body) = (self.cols(), self.pitch(), self.body());
        for (ci, xp) in x.chunks_exact(plane).take(self.c).enumerate() {
            for kj in 0..self.k {
                let r = ci * self.k + kj;
                let row = &mut out[r * pitch..(r + 1) * pitch];
                row[..body].fill(0.0);
                row[body + plane..].fill(0.0);
                let dst = &mut row[body..body + plane];
                // One flat copy of the plane shifted by kj - pad; the values it takes from the
                // neighbouring image row are zeroed after.
                if kj >= self.pad {
                    let s = (kj - self.pad).min(plane);
                    dst[..plane - s].copy_from_slice(&xp[s..]);
                    dst[plane - s..].fill(0.0);
                } else {
                    let s = (self.pad - kj).min(plane);
                    dst[s..].copy_from_slice(&xp[..plane - s]);
                    dst[..s].fill(0.0);
                }
                self.clear_wrapped(dst, kj);
            }
        }
    }

    /// Writes the image gradient `dx` (`c x h x w`, overwritten) from the gradient `d` of an
    /// expanded buffer: the adjoint of [`expand`](Self::expand). The padding rows of `d` are not
    /// read, and the values of its bodies that `expand` would have zeroed are overwritten with
    /// zeros (callers pass scratch they no longer need). The centre column's row is copied
    /// first, so `dx` needs no clearing.
    pub fn fold(&self, d: &mut [f32], dx: &mut [f32]) {
        let (plane, pitch, body) = (self.cols(), self.pitch(), self.body());
        let centre = self.pad;
        for (ci, dp) in dx.chunks_exact_mut(plane).take(self.c).enumerate() {
            let row = |kj: usize| (ci * self.k + kj) * pitch + body;
            let start = row(centre);
            dp.copy_from_slice(&d[start..start + plane]);
            for kj in (0..self.k).filter(|&kj| kj != centre) {
                let start = row(kj);
                let src = &mut d[start..start + plane];
                self.clear_wrapped(src, kj);
                if kj > self.pad {
                    let s = (kj - self.pad).min(plane);
                    for (t, v) in dp[s..].iter_mut().zip(&src[..plane - s]) {
                        *t += *v;
                    }
                } else {
                    let s = (self.pad - kj).min(plane);
                    for (t, v) in dp[..plane - s].iter_mut().zip(&src[s..]) {
                        *t += *v;
                    }
                }
            }
        }
    }

    /// Zeroes the padding rows above and below every row's body of a buffer: products for the
    /// outer kernel rows add into them, so they must hold numbers (not left-over scratch)
    /// before the first such product.
    pub fn clear_padding(&self, d: &mut [f32]) {
        let (plane, body) = (self.cols(), self.body());
        for row in d.chunks_exact_mut(self.pitch()).take(self.rows()) {
            row[..body].fill(0.0);
            row[body + plane..].fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::cpu::im2col::im2col;

    fn geom(c: usize, h: usize, w: usize, k: usize) -> Geom {
        let pad = (k - 1) / 2;
        Geom {
            c,
            h,
            w,
            k,
            stride: 1,
            pad,
            ho: h,
            wo: w,
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    const SHAPES: [(usize, usize, usize, usize); 8] = [
        (2, 5, 5, 3),
        (3, 4, 7, 3),
        (1, 6, 3, 5),
        (2, 1, 1, 3),
        (1, 2, 1, 5),
        (2, 3, 1, 3),
        (1, 1, 4, 5),
        (16, 8, 8, 3),
    ];

    #[test]
    fn kernel_row_offsets_reproduce_every_im2col_row() {
        for (c, h, w, k) in SHAPES {
            let g = geom(c, h, w, k);
            let t = TapRows::of(&g).expect("a shift geometry");
            let x = values(c * h * w, 7);
            let mut cols = vec![f32::NAN; g.rows() * g.cols()];
            im2col(&x, &g, &mut cols);
            let mut taps = vec![f32::NAN; t.len()];
            t.expand(&x, &mut taps);
            for ci in 0..c {
                for ki in 0..k {
                    for kj in 0..k {
                        let want = &cols[((ci * k + ki) * k + kj) * g.cols()..][..g.cols()];
                        let got = &taps[(ci * k + kj) * t.pitch() + t.offset(ki)..][..t.cols()];
                        assert_eq!(got, want, "{c}x{h}x{w} k{k} at channel {ci}, tap {ki},{kj}");
                    }
                }
            }
        }
    }

    #[test]
    fn fold_is_the_adjoint_of_expand() {
        for (c, h, w, k) in SHAPES {
            let t = TapRows::of(&geom(c, h, w, k)).expect("a shift geometry");
            let x = values(c * h * w, 3);
            let d = values(t.len(), 11);
            let mut e = vec![0f32; t.len()];
            t.expand(&x, &mut e);
            let lhs: f64 = e
                .iter()
                .zip(&d)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let mut scratch = d.clone();
            let mut dx = vec![f32::NAN; c * h * w];
            t.fold(&mut scratch, &mut dx);
            let rhs: f64 = x
                .iter()
                .zip(&dx)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            assert!((lhs - rhs).abs() < 1e-3, "{c}x{h}x{w} k{k}: {lhs} vs {rhs}");
        }
    }

    #[test]
    fn only_stride_one_same_padding_qualifies() {
        assert!(TapRows::of(&geom(2, 4, 4, 3)).is_some());
        let mut g = geom(2, 4, 4, 1);
        assert!(TapRows::of(&g).is_none(), "1x1");
        g = geom(2, 8, 8, 3);
        g.stride = 2;
        g.ho = 4;
        g.wo = 4;
        assert!(TapRows::of(&g).is_none(), "stride 2");
        g = geom(2, 8, 8, 3);
        g.pad = 0;
        g.ho = 6;
        g.wo = 6;
        assert!(TapRows::of(&g).is_none(), "valid padding");
    }
}
