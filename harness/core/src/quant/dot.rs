//! Products of unsigned 8-bit inputs (0..127) with signed 8-bit weights, summed exactly in 32
//! bits: the inner loop of the int8 deployment, as a small matrix product
//! `out[j][p] = sum_g sum_r x[g][p][r] * w[j][4 g + r]` over output channels `j`, output pixels
//! `p` and groups `g` of four `k`.
//!
//! Layout (as fbgemm and oneDNN pack for byte dot products): inputs come in groups of four
//! consecutive `k` per pixel, so that one 32-byte (64-byte) load holds four `k` of eight
//! (sixteen) pixels, and a weight's four bytes for that group are broadcast to every lane; each
//! lane then accumulates its own pixel, with no horizontal sums. Group `g` of pixel `p` is the
//! four bytes at `(offsets[g] + p) * 4`: packed patches put the groups one after another
//! (`offsets[g] = g * pixels`), and a stride-1 convolution reads a channel-blocked, padded input
//! in place, each group (four channels at one kernel tap) a shifted window of it (see
//! `super::int8`).
//!
//! Kernels, chosen at run time from what the CPU has: AVX-512 VNNI (`vpdpbusd` on 16 pixels),
//! AVX-VNNI (`vpdpbusd` on 8), AVX2 (`vpmaddubsw` sums byte products in pairs into 16 bits,
//! `vpmaddwd` against ones sums the pairs into 32), and a portable loop. With inputs at most 127
//! a pair sums to at most 2 x 127 x 128 = 32512 in magnitude, inside 16 bits, so AVX2 never
//! saturates and every kernel gives the same integers. `PROTBENCH_INT8_KERNEL=portable|avx2|
//! avxvnni|avx512vnni` forces one (to compare them on one machine; a kernel the CPU lacks is
//! refused).

#![allow(unsafe_code)]

/// Pixels are padded to a multiple of this: one AVX-512 register, two AVX2 registers.
pub const PIXELS: usize = 16;

/// `k` rounded up to whole groups of 4.
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// `n` pixels rounded up to whole registers.
pub fn padded_pixels(n: usize) -> usize {
    n.div_ceil(PIXELS) * PIXELS
}

/// The byte dot-product kernels, fastest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernel {
    /// Plain loops, everywhere.
    Portable,
    /// `vpmaddubsw` + `vpmaddwd` on 256-bit registers.
    Avx2,
    /// `vpdpbusd` on 256-bit registers.
    AvxVnni,
    /// `vpdpbusd` on 512-bit registers.
    Avx512Vnni,
}

impl Kernel {
    /// Its name, as `PROTBENCH_INT8_KERNEL` and `harness bench` write it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::AvxVnni => "avxvnni",
            Kernel::Avx512Vnni => "avx512vnni",
        }
    }

    /// Every kernel this CPU can run (detected once per process: every product checks it).
    pub fn available() -> &'static [Kernel] {
        static AVAILABLE: std::sync::OnceLock<Vec<Kernel>> = std::sync::OnceLock::new();
        AVAILABLE.get_or_init(Kernel::detect)
    }

    fn detect() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                all.push(Kernel::Avx2);
                if std::arch::is_x86_feature_detected!("avxvnni") {
                    all.push(Kernel::AvxVnni);
                }
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                all.push(Kernel::Avx512Vnni);
            }
        }
        all
    }

    /// The kernel products use: `PROTBENCH_INT8_KERNEL` when it names an available one, else
    /// the fastest available (read once per process).
    pub fn selected() -> Kernel {
        static SELECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *SELECTED.get_or_init(|| {
            crate::kernel_choice::from_env(
                "PROTBENCH_INT8_KERNEL",
                "int8",
                Kernel::available(),
                Kernel::name,
            )
            .unwrap_or(Kernel::Portable)
        })
    }
}

/// `out[j * pixels + p] = sum_g sum_r x[(offsets[g] + p) * 4 + r] * weights[j * kp + 4 g + r]`
/// for `rows` weight rows of `kp = 4 * offsets.len()` bytes, with the selected kernel. Panics
/// if `x` is too short for the last pixel of some group (a bug in the caller's layout).
pub fn matmul(
    x: &[u8],
    offsets: &[usize],
    pixels: usize,
    weights: &[i8],
    rows: usize,
    out: &mut [i32],
) {
    matmul_with(Kernel::selected(), x, offsets, pixels, weights, rows, out);
}

/// [`matmul`] with kernel `kernel`, which must be one of [`Kernel::available`] (else the
/// portable loop runs).
pub fn matmul_with(
    kernel: Kernel,
    x: &[u8],
    offsets: &[usize],
    pixels: usize,
    weights: &[i8],
    rows: usize,
    out: &mut [i32],
) {
    let kp = offsets.len() * 4;
    assert!(pixels.is_multiple_of(PIXELS), "pixels not padded");
    assert!(weights.len() >= rows * kp && out.len() >= rows * pixels);
    let end = offsets.iter().map(|&o| (o + pixels) * 4).max().unwrap_or(0);
    assert!(
        x.len() >= end,
        "input of {} bytes, groups reach {end}",
        x.len()
    );
    if !Kernel::available().contains(&kernel) {
        return portable(x, offsets, pixels, weights, rows, out);
    }
    match kernel {
        Kernel::Portable => portable(x, offsets, pixels, weights, rows, out),
        // SAFETY (all three): the CPU has the kernel's features (checked above), and every
        // load is within `x` (`end` above), `weights` and `out` (asserted lengths).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::run_avx2(x, offsets, pixels, weights, rows, out) },
        #[cfg(target_arch = "x86_64")]
        Kernel::AvxVnni => unsafe { x86::run_avxvnni(x, offsets, pixels, weights, rows, out) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => unsafe { x86::run512(x, offsets, pixels, weights, rows, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable(x, offsets, pixels, weights, rows, out),
    }
}

/// The portable path of [`matmul`].
pub fn portable(
    x: &[u8],
    offsets: &[usize],
    pixels: usize,
    weights: &[i8],
    rows: usize,
    out: &mut [i32],
) {
    let kp = offsets.len() * 4;
    for j in 0..rows {
        let w = &weights[j * kp..(j + 1) * kp];
        let o = &mut out[j * pixels..(j + 1) * pixels];
        o.fill(0);
        for (g, &off) in offsets.iter().enumerate() {
            let block = &x[off * 4..(off + pixels) * 4];
            for (p, acc) in o.iter_mut().enumerate() {
                for r in 0..4 {
                    *acc += i32::from(block[p * 4 + r]) * i32::from(w[g * 4 + r]);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// A 256-bit step: `acc + dot4(x, w)` per 32-bit lane.
    pub trait Step256 {
        /// Adds the four byte products of each lane to it.
        unsafe fn step(acc: __m256i, x: __m256i, w: __m256i) -> __m256i;
    }

    /// `vpmaddubsw` then `vpmaddwd` against ones (no saturation with inputs at most 127).
    pub struct Avx2;
    /// `vpdpbusd`.
    pub struct AvxVnni;

    impl Step256 for Avx2 {
        #[inline(always)]
        unsafe fn step(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
            // SAFETY: only called from functions compiled with AVX2 enabled.
            unsafe {
                let pairs = _mm256_maddubs_epi16(x, w);
                _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
            }
        }
    }

    impl Step256 for AvxVnni {
        #[inline(always)]
        unsafe fn step(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
            // SAFETY: only called from functions compiled with AVX-VNNI enabled.
            unsafe { _mm256_dpbusd_avx_epi32(acc, x, w) }
        }
    }

    /// Tiles of four rows by sixteen pixels; `S` does the byte products.
    #[inline(always)]
    unsafe fn run256<S: Step256>(
        x: &[u8],
        offsets: &[usize],
        pixels: usize,
        weights: &[i8],
        rows: usize,
        out: &mut [i32],
    ) {
        let kp = offsets.len() * 4;
        let mut j0 = 0;
        while j0 < rows {
            let nj = (rows - j0).min(4);
            let w = weights[j0 * kp..].as_ptr();
            let o = out[j0 * pixels..].as_mut_ptr();
            let mut p = 0;
            while p < pixels {
                // SAFETY: the caller checked the lengths (see `matmul_with`).
                unsafe {
                    match nj {
                        4 => tile256::<S, 4>(x.as_ptr(), offsets, p, w, kp, o, pixels),
                        3 => tile256::<S, 3>(x.as_ptr(), offsets, p, w, kp, o, pixels),
                        2 => tile256::<S, 2>(x.as_ptr(), offsets, p, w, kp, o, pixels),
                        _ => tile256::<S, 1>(x.as_ptr(), offsets, p, w, kp, o, pixels),
                    }
                }
                p += 16;
            }
            j0 += nj;
        }
    }

    #[inline(always)]
    unsafe fn tile256<S: Step256, const R: usize>(
        x: *const u8,
        offsets: &[usize],
        p: usize,
        w: *const i8,
        kp: usize,
        out: *mut i32,
        pixels: usize,
    ) {
        // SAFETY: pixels p..p + 16 of every group, bytes 4 g..4 g + 4 of rows 0..R and outputs
        // p..p + 16 of rows 0..R are in bounds (the caller's checks).
        unsafe {
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            for (g, &off) in offsets.iter().enumerate() {
                let at = x.add((off + p) * 4);
                let x0 = _mm256_loadu_si256(at as *const __m256i);
                let x1 = _mm256_loadu_si256(at.add(32) as *const __m256i);
                for (r, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_set1_epi32(std::ptr::read_unaligned(
                        w.add(r * kp + g * 4) as *const i32
                    ));
                    a[0] = S::step(a[0], x0, wv);
                    a[1] = S::step(a[1], x1, wv);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let dst = out.add(r * pixels + p);
                _mm256_storeu_si256(dst as *mut __m256i, a[0]);
                _mm256_storeu_si256(dst.add(8) as *mut __m256i, a[1]);
            }
        }
    }

    /// AVX2 entry.
    #[target_feature(enable = "avx2")]
    pub unsafe fn run_avx2(
        x: &[u8],
        offsets: &[usize],
        pixels: usize,
        weights: &[i8],
        rows: usize,
        out: &mut [i32],
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { run256::<Avx2>(x, offsets, pixels, weights, rows, out) }
    }

    /// AVX-VNNI entry.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn run_avxvnni(
        x: &[u8],
        offsets: &[usize],
        pixels: usize,
        weights: &[i8],
        rows: usize,
        out: &mut [i32],
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { run256::<AvxVnni>(x, offsets, pixels, weights, rows, out) }
    }

    /// AVX-512 VNNI: tiles of four rows by up to 64 pixels (four registers).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn run512(
        x: &[u8],
        offsets: &[usize],
        pixels: usize,
        weights: &[i8],
        rows: usize,
        out: &mut [i32],
    ) {
        let kp = offsets.len() * 4;
        let mut j0 = 0;
        while j0 < rows {
            let nj = (rows - j0).min(4);
            let w = weights[j0 * kp..].as_ptr();
            let o = out[j0 * pixels..].as_mut_ptr();
            let xp = x.as_ptr();
            let mut p = 0;
            while p < pixels {
                let v = ((pixels - p) / 16).min(4);
                // SAFETY: the caller checked the lengths (see `matmul_with`).
                unsafe {
                    match (nj, v) {
                        (4, 4) => tile512::<4, 4>(xp, offsets, p, w, kp, o, pixels),
                        (4, 3) => tile512::<4, 3>(xp, offsets, p, w, kp, o, pixels),
                        (4, 2) => tile512::<4, 2>(xp, offsets, p, w, kp, o, pixels),
                        (4, _) => tile512::<4, 1>(xp, offsets, p, w, kp, o, pixels),
                        (3, 4) => tile512::<3, 4>(xp, offsets, p, w, kp, o, pixels),
                        (3, 3) => tile512::<3, 3>(xp, offsets, p, w, kp, o, pixels),
                        (3, 2) => tile512::<3, 2>(xp, offsets, p, w, kp, o, pixels),
                        (3, _) => tile512::<3, 1>(xp, offsets, p, w, kp, o, pixels),
                        (2, 4) => tile512::<2, 4>(xp, offsets, p, w, kp, o, pixels),
                        (2, 3) => tile512::<2, 3>(xp, offsets, p, w, kp, o, pixels),
                        (2, 2) => tile512::<2, 2>(xp, offsets, p, w, kp, o, pixels),
                        (2, _) => tile512::<2, 1>(xp, offsets, p, w, kp, o, pixels),
                        (_, 4) => tile512::<1, 4>(xp, offsets, p, w, kp, o, pixels),
                        (_, 3) => tile512::<1, 3>(xp, offsets, p, w, kp, o, pixels),
                        (_, 2) => tile512::<1, 2>(xp, offsets, p, w, kp, o, pixels),
                        (_, _) => tile512::<1, 1>(xp, offsets, p, w, kp, o, pixels),
                    }
                }
                p += 16 * v;
            }
            j0 += nj;
        }
    }

    #[inline(always)]
    unsafe fn tile512<const R: usize, const V: usize>(
        x: *const u8,
        offsets: &[usize],
        p: usize,
        w: *const i8,
        kp: usize,
        out: *mut i32,
        pixels: usize,
    ) {
        // SAFETY: pixels p..p + 16 V of every group, bytes 4 g..4 g + 4 of rows 0..R and
        // outputs p..p + 16 V of rows 0..R are in bounds (the caller's checks); the function is
        // only inlined into `run512`, compiled with AVX-512 VNNI.
        unsafe {
            let mut acc = [[_mm512_setzero_si512(); V]; R];
            for (g, &off) in offsets.iter().enumerate() {
                let at = x.add((off + p) * 4);
                let mut xv = [_mm512_setzero_si512(); V];
                for (v, xr) in xv.iter_mut().enumerate() {
                    *xr = _mm512_loadu_si512(at.add(64 * v) as *const __m512i);
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_epi32(std::ptr::read_unaligned(
                        w.add(r * kp + g * 4) as *const i32
                    ));
                    for (av, xr) in a.iter_mut().zip(&xv) {
                        *av = _mm512_dpbusd_epi32(*av, *xr, wv);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                for (v, av) in a.iter().enumerate() {
                    _mm512_storeu_si512(out.add(r * pixels + p + 16 * v) as *mut __m512i, *av);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random inputs and weights with pixel 0 at the extremes (127 against -128 and 127).
    fn case(kp: usize, pixels: usize, rows: usize) -> (Vec<u8>, Vec<i8>) {
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as u32
        };
        let mut packed: Vec<u8> = (0..kp * pixels).map(|_| (next() % 128) as u8).collect();
        let mut weights: Vec<i8> = (0..rows * kp).map(|_| (next() % 256) as u8 as i8).collect();
        for g in 0..kp / 4 {
            packed[g * pixels * 4..g * pixels * 4 + 4].fill(127);
        }
        weights[..kp].fill(-128);
        weights[kp..2 * kp].fill(127);
        (packed, weights)
    }

    #[test]
    fn every_kernel_gives_the_same_integers_at_the_extremes_and_on_random_data() {
        // 80 pixels: a 64-pixel AVX-512 tile and a 16-pixel one; 6 rows: a tile of 4 and of 2.
        let (kp, pixels, rows) = (padded_k(70), padded_pixels(71), 6);
        assert_eq!((kp, pixels), (72, 80));
        let (packed, weights) = case(kp, pixels, rows);
        let offsets: Vec<usize> = (0..kp / 4).map(|g| g * pixels).collect();
        let mut want = vec![0; rows * pixels];
        portable(&packed, &offsets, pixels, &weights, rows, &mut want);
        assert_eq!(want[0], 127 * -128 * kp as i32);
        assert_eq!(want[pixels], 127 * 127 * kp as i32);
        // One value by hand: pixel 3, row 4.
        let by_hand: i32 = (0..kp)
            .map(|k| {
                i32::from(packed[(k / 4 * pixels + 3) * 4 + k % 4]) * i32::from(weights[4 * kp + k])
            })
            .sum();
        assert_eq!(want[4 * pixels + 3], by_hand);
        for &kernel in Kernel::available() {
            let mut got = vec![0; rows * pixels];
            matmul_with(kernel, &packed, &offsets, pixels, &weights, rows, &mut got);
            assert_eq!(got, want, "{}", kernel.name());
        }
    }

    #[test]
    fn groups_may_be_shifted_windows_of_one_input() {
        // Every group reads the same buffer at its own offset, as a stride-1 convolution does.
        let (kp, pixels, rows) = (12, 32, 3);
        let (x, weights) = case(4, pixels + 40, rows.max(2));
        let offsets = [0usize, 7, 40];
        let mut weights = weights;
        weights.resize(rows * kp, 3);
        let mut want = vec![0; rows * pixels];
        for j in 0..rows {
            for p in 0..pixels {
                want[j * pixels + p] = (0..kp)
                    .map(|k| {
                        i32::from(x[(offsets[k / 4] + p) * 4 + k % 4])
                            * i32::from(weights[j * kp + k])
                    })
                    .sum();
            }
        }
        for &kernel in Kernel::available() {
            let mut got = vec![0; rows * pixels];
            matmul_with(kernel, &x, &offsets, pixels, &weights, rows, &mut got);
            assert_eq!(got, want, "{}", kernel.name());
        }
    }

    #[test]
    #[should_panic(expected = "groups reach")]
    fn an_input_too_short_for_its_groups_is_a_panic_not_a_read_out_of_bounds() {
        let x = vec![0u8; 64];
        let mut out = vec![0; 16];
        matmul(&x, &[1], 16, &[1, 1, 1, 1], 1, &mut out);
    }
}
