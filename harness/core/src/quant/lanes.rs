//! The int8 deployment's element-wise conversions, in vector lanes where the CPU allows: layer
//! inputs to their integers ([`Quantizer`], the fake quantizer's rounding) and accumulators to
//! float outputs ([`Output`], the layer's formula and ReLU). Every lane does the same operations
//! as the scalar path, so the results do not depend on the CPU.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use super::QParams;

/// The integer of an input value (the fake quantizer's, clamped to 0..127). Rounding half to
/// even by adding and subtracting 1.5 x 2^23 (exact for |v| < 2^22 in the default rounding mode;
/// larger values clamp to the same end either way) avoids a libm call per value on CPUs without
/// SSE4.1's rounding instruction in the baseline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quantizer {
    inv: f32,
    zp: f32,
}

impl Quantizer {
    const MAGIC: f32 = 12_582_912.0;

    pub(crate) fn new(p: QParams) -> Self {
        Self {
            inv: 1.0 / p.scale,
            zp: p.zero_point as f32,
        }
    }

    #[inline(always)]
    pub(crate) fn apply(self, v: f32) -> u8 {
        // Beyond 2^22 the value clamps to an end anyway. `max` / `min` (not `clamp`) send NaN
        // to -2^22, hence 0, as the fake quantizer's conversion does, and leave a finite value
        // in i32 range, which converts in vector lanes (Rust's saturating `as` does not).
        #[allow(clippy::manual_clamp)] // clamp keeps NaN; this must not
        let t = (v * self.inv).max(-4_194_304.0).min(4_194_304.0);
        let r = (t + Self::MAGIC) - Self::MAGIC;
        // SAFETY: `zp + r` is finite and below 2^23 in magnitude.
        let q = unsafe { (self.zp + r).to_int_unchecked::<i32>() };
        q.clamp(0, 127) as u8
    }

    /// `dst[i] = apply(src[i])`, vectorised where the CPU allows (the same operations in every
    /// lane, so the same bytes).
    pub(crate) fn row(self, src: &[f32], dst: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present.
            return unsafe { self.row_avx2(src, dst) };
        }
        self.row_plain(src, dst);
    }

    #[inline(always)]
    fn row_plain(self, src: &[f32], dst: &mut [u8]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = self.apply(v);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn row_avx2(self, src: &[f32], dst: &mut [u8]) {
        self.row_plain(src, dst);
    }
}

/// One output channel's formula: `(acc - zc) * m + b`, then the ReLU when `relu`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    /// `zp * sum(w)`.
    pub zc: i32,
    /// `s_x * s_w`.
    pub m: f32,
    /// The bias.
    pub b: f32,
    /// Whether the ReLU follows.
    pub relu: bool,
}

impl Output {
    /// One output plane: row `r` of `dst` (`wo` values) from the first `wo` accumulators of
    /// row `r` of `acc` (`stride` per row), vectorised where the CPU allows (the same
    /// operations in every lane, so the same floats).
    pub(crate) fn plane(self, acc: &[i32], stride: usize, dst: &mut [MaybeUninit<f32>], wo: usize) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present.
            return unsafe { self.plane_avx2(acc, stride, dst, wo) };
        }
        self.plane_plain(acc, stride, dst, wo);
    }

    #[inline(always)]
    fn plane_plain(self, acc: &[i32], stride: usize, dst: &mut [MaybeUninit<f32>], wo: usize) {
        debug_assert!(acc.len() >= dst.len() / wo.max(1) * stride && stride >= wo);
        for (yr, ar) in dst.chunks_mut(wo).zip(acc.chunks(stride)) {
            for (o, &a) in yr.iter_mut().zip(ar) {
                let v = (a - self.zc) as f32 * self.m + self.b;
                o.write(if self.relu { v.max(0.0) } else { v });
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn plane_avx2(
        self,
        acc: &[i32],
        stride: usize,
        dst: &mut [MaybeUninit<f32>],
        wo: usize,
    ) {
        self.plane_plain(acc, stride, dst, wo);
    }
}

/// Every value of `x` quantized with `p`.
pub(crate) fn quantize(x: &[f32], p: QParams) -> Vec<u8> {
    let mut out = vec![0u8; x.len()];
    Quantizer::new(p).row(x, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_round_half_to_even_and_clamp_in_every_lane_as_the_fake_quantizer() {
        let p = QParams {
            scale: 0.5,
            zero_point: 3,
        };
        let q = Quantizer::new(p);
        // The fake quantizer's integer: zp + round_half_even(x / s), clamped; NaN gives 0.
        let reference = |v: f32| -> u8 {
            let r = (v * (1.0 / p.scale)).round_ties_even();
            ((p.zero_point as f32 + r) as i64).clamp(0, 127) as u8
        };
        let mut values = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            1e30,
            -1e30,
            0.25,
            0.75,
            1.25,
            -0.25,
            -1.75,
            -1.5,
            62.0,
            62.25,
            62.75,
            -0.0,
        ];
        values.extend((0..200).map(|i| i as f32 * 0.37 - 20.0));
        let mut got = vec![0u8; values.len()];
        q.row(&values, &mut got);
        let want: Vec<u8> = values.iter().map(|&v| reference(v)).collect();
        assert_eq!(got, want);
        let single: Vec<u8> = values.iter().map(|&v| q.apply(v)).collect();
        assert_eq!(single, want);
    }
}
