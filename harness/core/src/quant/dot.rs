//! Dot products of unsigned 8-bit inputs (0..127) with signed 8-bit weights, summed exactly in
//! 32 bits: the inner loop of the int8 deployment. Rows are padded to a multiple of
//! [`LANES`] with zeros, so no kernel has a tail.
//!
//! Paths, chosen at run time: AVX2's `vpmaddubsw` (32 byte products summed in pairs into 16 bits)
//! then `vpmaddwd` against ones (pairs into 32 bits); a portable loop everywhere else. With inputs
//! at most 127 a pair sums to at most 2 x 127 x 128 = 32512 in magnitude, inside 16 bits, so
//! nothing saturates and every path gives the same integers (tested on random data, and against
//! the portable path in every test run on an AVX2 machine).

#![allow(unsafe_code)]

/// Row padding: bytes per AVX2 register.
pub const LANES: usize = 32;

/// `kk` rounded up to whole [`LANES`].
pub fn padded(kk: usize) -> usize {
    kk.div_ceil(LANES) * LANES
}

/// For each of the `rows` weight rows (`weights`, `rows x kp`) and each of the `n` input rows
/// (`inputs`, `n x kp`): `out[j * n + i] = sum(inputs[i] * weights[j])`. `kp` must be a
/// multiple of [`LANES`] and inputs at most 127.
pub fn dot_rows(inputs: &[u8], weights: &[i8], kp: usize, rows: usize, out: &mut [i32]) {
    debug_assert_eq!(kp % LANES, 0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && !forced_portable() {
        // SAFETY: AVX2 is present (checked above); the slices are read within their bounds.
        unsafe { avx2::dot_rows(inputs, weights, kp, rows, out) };
        return;
    }
    portable(inputs, weights, kp, rows, out);
}

/// `PROTBENCH_INT8_PORTABLE=1` forces the portable path (to compare paths on one machine).
fn forced_portable() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("PROTBENCH_INT8_PORTABLE").is_ok_and(|v| v == "1"))
}

/// The portable path.
pub fn portable(inputs: &[u8], weights: &[i8], kp: usize, rows: usize, out: &mut [i32]) {
    let n = inputs.len() / kp;
    for j in 0..rows {
        let w = &weights[j * kp..(j + 1) * kp];
        for i in 0..n {
            let x = &inputs[i * kp..(i + 1) * kp];
            out[j * n + i] = x
                .iter()
                .zip(w)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// See [`super::dot_rows`]; up to four weight rows share each input load.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_rows(inputs: &[u8], weights: &[i8], kp: usize, rows: usize, out: &mut [i32]) {
        let n = inputs.len() / kp;
        let ones = _mm256_set1_epi16(1);
        let mut j0 = 0;
        while j0 < rows {
            let nj = (rows - j0).min(4);
            for i in 0..n {
                let x = inputs[i * kp..(i + 1) * kp].as_ptr();
                let mut acc = [_mm256_setzero_si256(); 4];
                let mut k = 0;
                while k < kp {
                    // SAFETY: k + 32 <= kp for every row (kp is a multiple of 32).
                    let xv = unsafe { _mm256_loadu_si256(x.add(k) as *const __m256i) };
                    for (j, a) in acc.iter_mut().enumerate().take(nj) {
                        let w = weights[(j0 + j) * kp..].as_ptr();
                        // SAFETY: as above, within row j0 + j.
                        let wv = unsafe { _mm256_loadu_si256(w.add(k) as *const __m256i) };
                        let pairs = _mm256_maddubs_epi16(xv, wv);
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones));
                    }
                    k += LANES;
                }
                for (j, a) in acc.iter().enumerate().take(nj) {
                    out[(j0 + j) * n + i] = hsum(*a);
                }
            }
            j0 += nj;
        }
    }

    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256i) -> i32 {
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256::<1>(v);
        let s = _mm_add_epi32(lo, hi);
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_gives_the_same_integers_at_the_extremes_and_on_random_data() {
        let kp = padded(70);
        assert_eq!(kp, 96);
        let n = 5;
        let rows = 6;
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as u32
        };
        let mut inputs: Vec<u8> = (0..n * kp).map(|_| (next() % 128) as u8).collect();
        let mut weights: Vec<i8> = (0..rows * kp).map(|_| (next() % 256) as u8 as i8).collect();
        // The extremes: 127 x -128 everywhere in the first input and weight rows.
        inputs[..kp].fill(127);
        weights[..kp].fill(-128);
        weights[kp..2 * kp].fill(127);
        let mut a = vec![0; rows * n];
        let mut b = vec![0; rows * n];
        dot_rows(&inputs, &weights, kp, rows, &mut a);
        portable(&inputs, &weights, kp, rows, &mut b);
        assert_eq!(a, b);
        assert_eq!(a[0], 127 * -128 * kp as i32);
        assert_eq!(a[n], 127 * 127 * kp as i32);
    }
}
