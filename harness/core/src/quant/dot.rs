//! Products of unsigned 8-bit inputs (0..127) with signed 8-bit weights, summed exactly in 32
//! bits: the inner loop of the int8 deployment, as a small matrix product
//! `out[j][p] = sum_k x[k][p] * w[j][k]` over output channels `j` and output pixels `p`.
//!
//! Layout (as fbgemm and oneDNN pack for byte dot products): the inputs are packed in groups of
//! four consecutive `k` per pixel, `[k / 4][pixel][4]`, so that one 32-byte load holds four `k`
//! of eight pixels; a weight's four bytes for that group are broadcast to every lane. On AVX2,
//! `vpmaddubsw` multiplies the bytes and sums them in pairs into 16 bits and `vpmaddwd` against
//! ones sums the pairs into 32 bits: each lane gains four products of its pixel, with no
//! horizontal sums. Pixels are padded to a multiple of [`PIXELS`], `k` to a multiple of 4 (with
//! zeros). With inputs at most 127 a pair sums to at most 2 x 127 x 128 = 32512 in magnitude,
//! inside 16 bits, so nothing saturates and every path (AVX2, portable) gives the same integers.

#![allow(unsafe_code)]

/// Pixels per AVX2 register (8 lanes of 32 bits).
pub const PIXELS: usize = 8;

/// `k` rounded up to whole groups of 4.
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// `n` pixels rounded up to whole registers.
pub fn padded_pixels(n: usize) -> usize {
    n.div_ceil(PIXELS) * PIXELS
}

/// `out[j * pixels + p] = sum_k x[k][p] * weights[j][k]` for `rows` weight rows of `kp` bytes
/// (`kp` a multiple of 4) and inputs packed `[kp / 4][pixels][4]` (`pixels` a multiple of
/// [`PIXELS`], inputs at most 127).
pub fn matmul(
    packed: &[u8],
    pixels: usize,
    weights: &[i8],
    kp: usize,
    rows: usize,
    out: &mut [i32],
) {
    debug_assert!(kp.is_multiple_of(4) && pixels.is_multiple_of(PIXELS));
    debug_assert!(packed.len() >= kp * pixels && weights.len() >= rows * kp);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && !forced_portable() {
        // SAFETY: AVX2 is present (checked above); every access is within the checked lengths.
        unsafe { avx2::matmul(packed, pixels, weights, kp, rows, out) };
        return;
    }
    portable(packed, pixels, weights, kp, rows, out);
}

/// `PROTBENCH_INT8_PORTABLE=1` forces the portable path (to compare paths on one machine).
fn forced_portable() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("PROTBENCH_INT8_PORTABLE").is_ok_and(|v| v == "1"))
}

/// The portable path of [`matmul`].
pub fn portable(
    packed: &[u8],
    pixels: usize,
    weights: &[i8],
    kp: usize,
    rows: usize,
    out: &mut [i32],
) {
    for j in 0..rows {
        let w = &weights[j * kp..(j + 1) * kp];
        let o = &mut out[j * pixels..(j + 1) * pixels];
        o.fill(0);
        for g in 0..kp / 4 {
            let block = &packed[g * pixels * 4..(g + 1) * pixels * 4];
            for (p, acc) in o.iter_mut().enumerate() {
                for r in 0..4 {
                    *acc += i32::from(block[p * 4 + r]) * i32::from(w[g * 4 + r]);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::PIXELS;

    /// See [`super::matmul`]: tiles of four weight rows by sixteen pixels (eight by the tail),
    /// each input load shared by the four rows and each weight broadcast by two loads.
    #[target_feature(enable = "avx2")]
    pub unsafe fn matmul(
        packed: &[u8],
        pixels: usize,
        weights: &[i8],
        kp: usize,
        rows: usize,
        out: &mut [i32],
    ) {
        let ones = _mm256_set1_epi16(1);
        let groups = kp / 4;
        let x = packed.as_ptr();
        let wp = weights.as_ptr();
        let mut j0 = 0;
        while j0 < rows {
            let nj = (rows - j0).min(4);
            let mut p = 0;
            while p < pixels {
                let two = p + 2 * PIXELS <= pixels;
                let mut acc = [[_mm256_setzero_si256(); 2]; 4];
                for g in 0..groups {
                    let at = (g * pixels + p) * 4;
                    // SAFETY: the pixel block lies within the packed group (p + 8, or p + 16 when
                    // `two`, <= pixels), and each weight read is 4 bytes of row j0 + j < rows.
                    unsafe {
                        let x0 = _mm256_loadu_si256(x.add(at) as *const __m256i);
                        let x1 = if two {
                            _mm256_loadu_si256(x.add(at + 32) as *const __m256i)
                        } else {
                            x0
                        };
                        for (j, a) in acc.iter_mut().enumerate().take(nj) {
                            let w = std::ptr::read_unaligned(
                                wp.add((j0 + j) * kp + g * 4) as *const i32
                            );
                            let wv = _mm256_set1_epi32(w);
                            let p0 = _mm256_maddubs_epi16(x0, wv);
                            a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(p0, ones));
                            if two {
                                let p1 = _mm256_maddubs_epi16(x1, wv);
                                a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(p1, ones));
                            }
                        }
                    }
                }
                let width = if two { 2 * PIXELS } else { PIXELS };
                for (j, a) in acc.iter().enumerate().take(nj) {
                    let row = (j0 + j) * pixels + p;
                    let dst = &mut out[row..row + width];
                    // SAFETY: dst holds 8 (or 16 when `two`) i32.
                    unsafe {
                        _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, a[0]);
                        if two {
                            _mm256_storeu_si256(dst.as_mut_ptr().add(8) as *mut __m256i, a[1]);
                        }
                    }
                }
                p += width;
            }
            j0 += nj;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_gives_the_same_integers_at_the_extremes_and_on_random_data() {
        // 24 pixels: a block of sixteen then a block of eight on the AVX2 path.
        let (kp, pixels, rows) = (padded_k(70), padded_pixels(21), 6);
        assert_eq!((kp, pixels), (72, 24));
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as u32
        };
        let mut packed: Vec<u8> = (0..kp * pixels).map(|_| (next() % 128) as u8).collect();
        let mut weights: Vec<i8> = (0..rows * kp).map(|_| (next() % 256) as u8 as i8).collect();
        // Pixel 0 at the extremes: 127 against -128 (row 0) and 127 (row 1) for every k.
        for g in 0..kp / 4 {
            packed[g * pixels * 4..g * pixels * 4 + 4].fill(127);
        }
        weights[..kp].fill(-128);
        weights[kp..2 * kp].fill(127);
        let mut a = vec![0; rows * pixels];
        let mut b = vec![0; rows * pixels];
        matmul(&packed, pixels, &weights, kp, rows, &mut a);
        portable(&packed, pixels, &weights, kp, rows, &mut b);
        assert_eq!(a, b);
        assert_eq!(a[0], 127 * -128 * kp as i32);
        assert_eq!(a[pixels], 127 * 127 * kp as i32);
        // One value by hand: pixel 3, row 4.
        let want: i32 = (0..kp)
            .map(|k| {
                i32::from(packed[(k / 4 * pixels + 3) * 4 + k % 4]) * i32::from(weights[4 * kp + k])
            })
            .sum();
        assert_eq!(a[4 * pixels + 3], want);
    }
}
