//! The f32 matrix product with one order of arithmetic on every CPU and at every thread count,
//! so that training gives the same bits on an AVX2 laptop, an AVX-512 server and a 3-thread CI
//! runner.
//!
//! The rule: every destination value is one fused multiply-add chain over `k` in increasing
//! order, started from the destination's old value (or from zero when not accumulating):
//! `c = fma(a[i][k-1], b[k-1][j], ... fma(a[i][0], b[0][j], c))`. Blocking over `k` keeps
//! the rule, since a block stores its running values to the destination (an exact f32 store)
//! and the next block loads them again; vector width only decides how many `j` run side by
//! side, and threads only decide who computes which tile. The `gemm` crate, which this replaces
//! by default, sums each cache-sized block of `k` on its own and adds it to the destination, so
//! its results depend on the block size it derives from the CPU's caches (and on its kernel).
//!
//! Kernels ([`Path`]), chosen at run time: AVX-512F (8 x 32 tiles), AVX2 + FMA (6 x 16) and a
//! portable loop (`f32::mul_add`, fused everywhere: a hardware instruction on aarch64 and on
//! x86 with FMA, a correctly rounded library call otherwise, slow but equal).
//! `PROTBENCH_F32_KERNEL=portable|avx2|avx512` forces one (a path the CPU lacks is refused
//! with a warning).

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

use super::gemm::Mat;

/// `k` per packed block: an A micro-panel (`MR x KC`) and a B micro-panel (`KC x NR`) stay in
/// L1 together.
const KC: usize = 256;
/// Columns of the destination per task (a multiple of every tile's `nr`).
const NC: usize = 512;
/// A multiple of every tile's `nr`: the narrowest column block a task may get.
const NR_MULTIPLE: usize = 32;
/// Rows of the destination per task (a multiple of every tile's `mr`).
const MC: usize = 96;

/// The product kernels, fastest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    /// Plain loops of `f32::mul_add`, everywhere.
    Portable,
    /// 256-bit FMA.
    Avx2,
    /// 512-bit FMA.
    Avx512,
}

impl Path {
    /// Its name, as `PROTBENCH_F32_KERNEL` and the run records write it.
    pub fn name(self) -> &'static str {
        match self {
            Path::Portable => "portable",
            Path::Avx2 => "avx2",
            Path::Avx512 => "avx512",
        }
    }

    /// Every path this CPU can run (detected once per process).
    pub fn available() -> &'static [Path] {
        static AVAILABLE: OnceLock<Vec<Path>> = OnceLock::new();
        AVAILABLE.get_or_init(|| {
            let mut all = vec![Path::Portable];
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    all.push(Path::Avx2);
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    all.push(Path::Avx512);
                }
            }
            all
        })
    }

    /// The path products use: the one [`Path::force`] set, else `PROTBENCH_F32_KERNEL` when it
    /// names an available one, else the fastest available (read once per process).
    pub fn selected() -> Path {
        match FORCED.load(Ordering::Relaxed) {
            1 => return Path::Portable,
            2 => return Path::Avx2,
            3 => return Path::Avx512,
            _ => {}
        }
        static SELECTED: OnceLock<Path> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            crate::kernel_choice::from_env(
                "PROTBENCH_F32_KERNEL",
                "f32",
                Path::available(),
                Path::name,
            )
            .unwrap_or(Path::Portable)
        })
    }

    /// Makes every product of the process use `path` (when available; `None` goes back to the
    /// default), so that one test can train under each path in turn. Safe to call while other
    /// threads compute: every path gives the same bits, only the speed changes.
    pub fn force(path: Option<Path>) {
        let code = match path {
            Some(p) if Path::available().contains(&p) => p as u8 + 1,
            _ => 0,
        };
        FORCED.store(code, Ordering::Relaxed);
    }
}

/// [`Path::force`]'s choice: 0 none, else the path's discriminant plus one.
static FORCED: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// Packed A and B blocks of this thread's tasks.
    static PACKED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// A destination pointer that tasks on other threads write disjoint tiles of.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: tasks write disjoint tiles (distinct row or column blocks) of the destination.
unsafe impl Send for Dst {}
// SAFETY: as above.
unsafe impl Sync for Dst {}

/// `dst[i * dst_rs + j] (+)= sum_p a[i][p] * b[p][j]` in the fixed order of the module doc,
/// with kernel `path` (which must be available: the caller checks), on up to `threads` threads.
///
/// # Safety
/// `dst` must be valid for writes of `(a.rows - 1) * dst_rs + b.cols` values (and reads, of
/// initialised values, when `accumulate`), must not alias `a` or `b`, and the views must lie in
/// their slices; `a.cols == b.rows`, `dst_rs >= b.cols`.
pub(crate) unsafe fn product(
    dst: *mut f32,
    dst_rs: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
    threads: usize,
    path: Path,
) {
    let (m, n) = (a.rows, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    // A product too small for one task per thread (a batch-1 convolution: 64 channels of 64
    // pixels) gets narrower column blocks, so that every thread has one; any split gives the
    // same bits, each value being its own chain.
    let row_blocks = m.div_ceil(MC);
    let nc = if threads > 1 && row_blocks * n.div_ceil(NC) < threads {
        n.div_ceil(threads.div_ceil(row_blocks))
            .next_multiple_of(NR_MULTIPLE)
            .clamp(NR_MULTIPLE, NC)
    } else {
        NC
    };
    let col_blocks = n.div_ceil(nc);
    let dst = Dst(dst);
    let task = |t: usize| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let rows = rb * MC..((rb + 1) * MC).min(m);
        let cols = cb * nc..((cb + 1) * nc).min(n);
        // SAFETY: tiles of distinct tasks are disjoint; the caller vouches for the rest.
        unsafe { block(dst, dst_rs, a, b, rows, cols, accumulate, path) };
    };
    let tasks = row_blocks * col_blocks;
    if threads > 1 && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// A kernel's tile: `mr` rows by `nr` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    mr: usize,
    nr: usize,
}

impl Path {
    /// The tiles for a product with `n` destination columns: a main one and a shorter one of
    /// the same width for the last rows. Any tile gives the same bits (each value is its own
    /// chain), so the choice is speed alone: the main tiles keep 12-16 accumulators in
    /// registers with room to spare (a 4 x 24 AVX2 tile needed all sixteen and LLVM spilled),
    /// narrower and taller for thin products.
    fn tiles(self, n: usize) -> (Tile, Tile) {
        let ((mr, nr), short) = match self {
            Path::Portable => ((4, 16), 4),
            Path::Avx2 if n >= 16 => ((6, 16), 4),
            Path::Avx2 => ((12, 8), 4),
            Path::Avx512 if n >= 32 => ((8, 32), 4),
            Path::Avx512 => ((12, 16), 4),
        };
        (Tile { mr, nr }, Tile { mr: short, nr })
    }
}

/// A matrix in place: element `(r, p)` at `ptr[r * rs + p * cs]`.
#[derive(Clone, Copy)]
struct Strided {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

/// One task: destination rows `rows` by columns `cols`, over all of `k`.
///
/// Both operands are read in place where they can be: `A` (broadcast one value at a time) at
/// any strides, `B` (loaded `nr` values at a time) when its rows are contiguous, as the `gemm`
/// crate does with its unit-stride operand. Copying an image's taps before multiplying them
/// cost a fifth of the product. Only edge panels (rows past `m`, columns past `n`) and `B`s read
/// through a transposed view are packed, zero-padded.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    dst: Dst,
    dst_rs: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    accumulate: bool,
    path: Path,
) {
    let (main, short) = path.tiles(b.cols);
    let nr = main.nr;
    let k = a.cols;
    PACKED.with(|packed| {
        let mut packed = packed.borrow_mut();
        let (pa, pb) = &mut *packed;
        let mut pc = 0;
        // k == 0: one empty block still writes the zeros of a product that does not accumulate.
        loop {
            let kc = (k - pc).min(KC);
            let load = accumulate || pc > 0;
            let mut j = cols.start;
            while j < cols.end {
                let width = (cols.end - j).min(nr);
                let bm = if b.cs == 1 && width == nr {
                    Strided {
                        ptr: b.data[pc * b.rs + j..].as_ptr(),
                        rs: b.rs,
                        cs: 1,
                    }
                } else {
                    pack_b(b, pc, kc, j, width, nr, pb);
                    Strided {
                        ptr: pb.as_ptr(),
                        rs: nr,
                        cs: 1,
                    }
                };
                let mut i = rows.start;
                while i < rows.end {
                    let tile = if rows.end - i >= main.mr { main } else { short };
                    let mr = tile.mr;
                    let height = (rows.end - i).min(mr);
                    let am = if height == mr {
                        Strided {
                            ptr: a.data[i * a.rs + pc * a.cs..].as_ptr(),
                            rs: a.rs,
                            cs: a.cs,
                        }
                    } else {
                        pack_a(a, i, height, pc, kc, mr, pa);
                        Strided {
                            ptr: pa.as_ptr(),
                            rs: 1,
                            cs: mr,
                        }
                    };
                    // SAFETY: the tile's values are inside the destination (the caller's
                    // contract) and belong to this task alone.
                    let c = unsafe { dst.0.add(i * dst_rs + j) };
                    if width == nr && height == mr {
                        // SAFETY: a whole tile; `am` reaches mr rows and `bm` nr columns of kc.
                        unsafe { kernel(path, tile, kc, am, bm, c, dst_rs, load) };
                    } else {
                        // An edge tile runs the same kernel on a full-size copy, so its valid
                        // values see the same arithmetic.
                        let mut tmp = [0f32; MAX_TILE];
                        if load {
                            for r in 0..height {
                                for s in 0..width {
                                    // SAFETY: inside the tile, initialised when loading.
                                    tmp[r * nr + s] = unsafe { *c.add(r * dst_rs + s) };
                                }
                            }
                        }
                        // SAFETY: `tmp` holds mr x nr values.
                        unsafe { kernel(path, tile, kc, am, bm, tmp.as_mut_ptr(), nr, load) };
                        for r in 0..height {
                            for s in 0..width {
                                // SAFETY: inside the tile.
                                unsafe { *c.add(r * dst_rs + s) = tmp[r * nr + s] };
                            }
                        }
                    }
                    i += height;
                }
                j += width;
            }
            pc += kc;
            if pc >= k {
                break;
            }
        }
    });
}

/// The largest `mr x nr` of any tile.
const MAX_TILE: usize = 8 * 32;

/// Rows `i0..i0 + height`, columns `p0..p0 + kc` of `a` as one panel of `mr` rows,
/// `[p][r]`, rows past `height` zero.
fn pack_a(
    a: Mat<'_>,
    i0: usize,
    height: usize,
    p0: usize,
    kc: usize,
    mr: usize,
    out: &mut Vec<f32>,
) {
    out.clear();
    out.resize(kc * mr, 0.0);
    for r in 0..height {
        let row = (i0 + r) * a.rs;
        for p in 0..kc {
            out[p * mr + r] = a.data[row + (p0 + p) * a.cs];
        }
    }
}

/// Rows `p0..p0 + kc`, columns `j0..j0 + width` of `b` as one panel of `kc` rows of `nr`,
/// columns past `width` zero. A transposed view (`rs == 1`) is read along its columns, which
/// are contiguous.
fn pack_b(
    b: Mat<'_>,
    p0: usize,
    kc: usize,
    j0: usize,
    width: usize,
    nr: usize,
    out: &mut Vec<f32>,
) {
    out.clear();
    out.resize(kc * nr, 0.0);
    if b.rs == 1 && b.cs != 1 {
        for s in 0..width {
            let col = (j0 + s) * b.cs + p0;
            for (p, &v) in b.data[col..col + kc].iter().enumerate() {
                out[p * nr + s] = v;
            }
        }
        return;
    }
    for p in 0..kc {
        let dst = &mut out[p * nr..p * nr + width];
        let row = (p0 + p) * b.rs + j0 * b.cs;
        if b.cs == 1 {
            dst.copy_from_slice(&b.data[row..row + width]);
        } else {
            for (s, v) in dst.iter_mut().enumerate() {
                *v = b.data[row + s * b.cs];
            }
        }
    }
}

/// One tile: `c[r][s] = fma chain over p of a(r, p) * b(p, s)`, from `c` when `load` and from
/// zero otherwise.
///
/// # Safety
/// `c` valid for `tile.mr` rows of `tile.nr` values `c_rs` apart (initialised when `load`);
/// `a` reaches `tile.mr` rows and `b` `tile.nr` columns of `kc`; `path` available and `tile`
/// one that [`Path::tile`] gives it.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    path: Path,
    tile: Tile,
    kc: usize,
    a: Strided,
    b: Strided,
    c: *mut f32,
    c_rs: usize,
    load: bool,
) {
    // SAFETY (every arm): the caller checked the path is available; the bounds are its
    // contract.
    unsafe {
        match (path, tile.mr, tile.nr) {
            #[cfg(target_arch = "x86_64")]
            (Path::Avx2, 6, 16) => x86::avx2::<6, 2>(kc, a, b, c, c_rs, load),
            #[cfg(target_arch = "x86_64")]
            (Path::Avx2, 4, 16) => x86::avx2::<4, 2>(kc, a, b, c, c_rs, load),
            #[cfg(target_arch = "x86_64")]
            (Path::Avx2, 12, 8) => x86::avx2::<12, 1>(kc, a, b, c, c_rs, load),
            #[cfg(target_arch = "x86_64")]
            (Path::Avx2, 4, 8) => x86::avx2::<4, 1>(kc, a, b, c, c_rs, load),
            #[cfg(target_arch = "x86_64")]
            (Path::Avx512, 8, 32) => x86::avx512::<8, 2>(kc, a, b, c, c_rs, load),
            #[cfg(target_arch = "x86_64")]
            (Path::Avx512, 4, 32) => x86::avx512::<4, 2>(kc, a, b, c, c_rs, load),
            #[cfg(target_arch = "x86_64")]
            (Path::Avx512, 12, 16) => x86::avx512::<12, 1>(kc, a, b, c, c_rs, load),
            #[cfg(target_arch = "x86_64")]
            (Path::Avx512, 4, 16) => x86::avx512::<4, 1>(kc, a, b, c, c_rs, load),
            _ => portable::<4, 16>(kc, a, b, c, c_rs, load),
        }
    }
}

/// The portable tile, `f32::mul_add` lane by lane.
///
/// # Safety
/// As [`kernel`].
unsafe fn portable<const MR: usize, const NR: usize>(
    kc: usize,
    a: Strided,
    b: Strided,
    c: *mut f32,
    c_rs: usize,
    load: bool,
) {
    let mut acc = [[0f32; NR]; MR];
    // SAFETY (the block): inside the tile and the operands (the caller's contract).
    unsafe {
        if load {
            for (r, row) in acc.iter_mut().enumerate() {
                for (s, v) in row.iter_mut().enumerate() {
                    *v = *c.add(r * c_rs + s);
                }
            }
        }
        for p in 0..kc {
            let bp = std::slice::from_raw_parts(b.ptr.add(p * b.rs), NR);
            for (r, row) in acc.iter_mut().enumerate() {
                let ar = *a.ptr.add(r * a.rs + p * a.cs);
                for (v, &bs) in row.iter_mut().zip(bp) {
                    *v = ar.mul_add(bs, *v);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (s, v) in row.iter().enumerate() {
                *c.add(r * c_rs + s) = *v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Strided;

    /// An `MR x 8 NV` tile on 256-bit FMA.
    #[inline(always)]
    unsafe fn tile256<const MR: usize, const NV: usize>(
        kc: usize,
        a: Strided,
        b: Strided,
        c: *mut f32,
        c_rs: usize,
        load: bool,
    ) {
        // SAFETY: the caller's bounds (see `super::kernel`); only inlined into functions
        // compiled with AVX2 and FMA.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NV]; MR];
            if load {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = _mm256_loadu_ps(c.add(r * c_rs + 8 * v));
                    }
                }
            }
            for p in 0..kc {
                let bp = b.ptr.add(p * b.rs);
                let mut bv = [_mm256_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(bp.add(8 * v));
                }
                let ap = a.ptr.add(p * a.cs);
                for (r, row) in acc.iter_mut().enumerate() {
                    let ar = _mm256_broadcast_ss(&*ap.add(r * a.rs));
                    for (x, bx) in row.iter_mut().zip(&bv) {
                        *x = _mm256_fmadd_ps(ar, *bx, *x);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, x) in row.iter().enumerate() {
                    _mm256_storeu_ps(c.add(r * c_rs + 8 * v), *x);
                }
            }
        }
    }

    /// An `MR x 16 NV` tile on 512-bit FMA.
    #[inline(always)]
    unsafe fn tile512<const MR: usize, const NV: usize>(
        kc: usize,
        a: Strided,
        b: Strided,
        c: *mut f32,
        c_rs: usize,
        load: bool,
    ) {
        // SAFETY: the caller's bounds (see `super::kernel`); only inlined into functions
        // compiled with AVX-512F.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            if load {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = _mm512_loadu_ps(c.add(r * c_rs + 16 * v));
                    }
                }
            }
            for p in 0..kc {
                let bp = b.ptr.add(p * b.rs);
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(bp.add(16 * v));
                }
                let ap = a.ptr.add(p * a.cs);
                for (r, row) in acc.iter_mut().enumerate() {
                    let ar = _mm512_set1_ps(*ap.add(r * a.rs));
                    for (x, bx) in row.iter_mut().zip(&bv) {
                        *x = _mm512_fmadd_ps(ar, *bx, *x);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, x) in row.iter().enumerate() {
                    _mm512_storeu_ps(c.add(r * c_rs + 16 * v), *x);
                }
            }
        }
    }

    /// An `MR x 8 NV` tile compiled for AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2<const MR: usize, const NV: usize>(
        kc: usize,
        a: Strided,
        b: Strided,
        c: *mut f32,
        c_rs: usize,
        load: bool,
    ) {
        // SAFETY: forwarded.
        unsafe { tile256::<MR, NV>(kc, a, b, c, c_rs, load) }
    }

    /// An `MR x 16 NV` tile compiled for AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512<const MR: usize, const NV: usize>(
        kc: usize,
        a: Strided,
        b: Strided,
        c: *mut f32,
        c_rs: usize,
        load: bool,
    ) {
        // SAFETY: forwarded.
        unsafe { tile512::<MR, NV>(kc, a, b, c, c_rs, load) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values whose products and sums round: a fixed order is visible in the last bits.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.7
            })
            .collect()
    }

    /// The rule, written out: one fused chain per value, in `k` order.
    fn reference(c: &mut [f32], a: Mat<'_>, b: Mat<'_>, accumulate: bool) {
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut v = if accumulate { c[i * b.cols + j] } else { 0.0 };
                for p in 0..a.cols {
                    v = a.data[i * a.rs + p * a.cs].mul_add(b.data[p * b.rs + j * b.cs], v);
                }
                c[i * b.cols + j] = v;
            }
        }
    }

    #[test]
    fn every_path_and_thread_count_gives_the_bits_of_one_fused_chain() {
        // Shapes with edges in every direction, k across several blocks, and the shapes of
        // the convolutions (16 x 48 x 1024 and its transposes).
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (16, 48, 1024),
            (48, 16, 64),
            (9, 600, 33),
            (70, 300, 530),
            (5, 0, 6),
        ] {
            let a_data = values(m * k, 1);
            let b_data = values(k * n, 2);
            let start = values(m * n, 3);
            for transposed_a in [false, true] {
                let a = if transposed_a {
                    // The same matrix read through a transposed layout (column stride m).
                    Mat {
                        data: &a_data,
                        rows: m,
                        cols: k,
                        rs: 1,
                        cs: m,
                    }
                } else {
                    Mat::rows(&a_data, m, k)
                };
                let b = Mat::rows(&b_data, k, n);
                for accumulate in [false, true] {
                    let mut want = start.clone();
                    reference(&mut want, a, b, accumulate);
                    for &path in Path::available() {
                        for threads in [1, 2, 3] {
                            let mut got = start.clone();
                            // SAFETY: `got` holds m x n values; the views are in bounds.
                            unsafe {
                                product(got.as_mut_ptr(), n, a, b, accumulate, threads, path)
                            };
                            let same = got
                                .iter()
                                .zip(&want)
                                .all(|(g, w)| g.to_bits() == w.to_bits());
                            assert!(
                                same,
                                "{m}x{k}x{n} {} threads {threads} accumulate {accumulate} \
                                 transposed {transposed_a}",
                                path.name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn paths_are_detected_and_the_portable_one_is_always_there() {
        assert_eq!(Path::available()[0], Path::Portable);
        assert!(Path::available().contains(&Path::selected()));
    }
}
