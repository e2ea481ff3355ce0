//! 2-D convolution (square kernels, dilation 1, symmetric zero padding, groups) as a candle
//! custom op with forward and backward.
//!
//! Dense and grouped convolutions are matrix products per image and group:
//! `y = W[O, C*k*k] x cols[C*k*k, Ho*Wo]`, `dW^T += cols x dY^T`, `dX = col2im(W^T x dY)`.
//! Images are spread over rayon's threads, one single-threaded gemm per image: the products of
//! small CIFAR layers (64 x 576 x 64 for ResNet's last stage) are too small to split well, and
//! per-image work needs no synchronisation except the final sum of per-thread weight gradients.
//! With fewer images than threads (batch-1 latency) gemm splits each product instead. 1x1
//! stride-1 convolutions read the image as the column matrix (no im2col). The column buffers
//! come from [`workspace`](super::workspace) and stay mapped between steps.
//!
//! Stride-1 "same" convolutions (ResNet's and VGG's 3x3 layers) skip the column matrix: the
//! image is copied once per kernel column and every kernel row is an offset into that copy, so
//! the convolution is k products summed (see [`tap_rows`](super::tap_rows) and `taps.rs`); a
//! third of the copying in each direction, the same multiply-adds.
//!
//! Depthwise convolutions (`groups == C_in == C_out`) run as direct loops over each plane
//! (`depthwise.rs`): with one input channel per output a gemm would be 1 x k*k x Ho*Wo per
//! plane, all overhead.

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::elementwise::filled_by;
use super::gemm::{Mat, sgemm, sgemm_into, transpose};
use super::im2col::{Geom, col2im, im2col};
use super::tap_rows::TapRows;
use super::workspace::Scratch;
use super::{f32_slice, tensor, threads, with_f32};

mod depthwise;
mod taps;

use depthwise::{depthwise_backward, depthwise_forward};
use taps::{tap_rows_backward, tap_rows_forward};

/// Shapes of one convolution call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    cin: usize,
    cout: usize,
    groups: usize,
    /// Per-group geometry (channels of one group).
    g: Geom,
}

impl Dims {
    fn new(x: &[usize], w: &[usize], stride: usize, pad: usize, groups: usize) -> Result<Self> {
        let (&[n, cin, h, wd], &[cout, cig, kh, kw]) = (x, w) else {
            bail!("conv2d needs 4-d input and weight, got {x:?} and {w:?}")
        };
        if stride == 0 || groups == 0 || cin % groups != 0 || cout % groups != 0 {
            bail!("conv2d: {cin} -> {cout} channels, stride {stride}, groups {groups} is invalid")
        }
        if cig != cin / groups || kh != kw || kh == 0 {
            bail!("conv2d weight {w:?} does not fit input {x:?} with {groups} groups")
        }
        let (hp, wp) = (h + 2 * pad, wd + 2 * pad);
        if hp < kh || wp < kh {
            bail!("conv2d kernel {kh}x{kh} is larger than the padded input {hp}x{wp}")
        }
        let g = Geom {
            c: cig,
            h,
            w: wd,
            k: kh,
            stride,
            pad,
            ho: (hp - kh) / stride + 1,
            wo: (wp - kh) / stride + 1,
        };
        Ok(Self {
            n,
            cin,
            cout,
            groups,
            g,
        })
    }

    fn depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.cin && self.cout == self.cin
    }

    /// The kernel-row split of [`tap_rows`](super::tap_rows) when it applies (one group,
    /// stride 1, "same" padding, kernel larger than 1x1) and pays: with fewer images than
    /// threads each product is split over the threads, and k smaller split products cost more
    /// hand-offs than the copies they save (batch-1 latency was 18 % slower).
    fn tap_rows(&self) -> Option<TapRows> {
        if self.groups == 1 && self.n >= threads() {
            TapRows::of(&self.g)
        } else {
            None
        }
    }

    fn in_image(&self) -> usize {
        self.cin * self.g.h * self.g.w
    }

    fn out_image(&self) -> usize {
        self.cout * self.g.ho * self.g.wo
    }

    fn out_dims(&self) -> [usize; 4] {
        [self.n, self.cout, self.g.ho, self.g.wo]
    }
}

/// The custom op: operands (input N x C x H x W, weight O x C/groups x k x k).
#[derive(Debug, Clone, Copy)]
struct Conv2dOp {
    stride: usize,
    pad: usize,
    groups: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "protbench-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::new(l1.dims(), l2.dims(), self.stride, self.pad, self.groups)?;
        let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let y = if d.depthwise() {
            depthwise_forward(&d, x, w)
        } else if let Some(t) = d.tap_rows() {
            tap_rows_forward(&d, t, x, w)
        } else {
            gemm_forward(&d, x, w)
        };
        Ok((CpuStorage::F32(y), Shape::from(d.out_dims().to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = Dims::new(x.dims(), w.dims(), self.stride, self.pad, self.groups)?;
        // The network input (or a frozen weight) needs no gradient; skipping it saves a full
        // col2im pass on the first layer.
        let (need_dx, need_dw) = (x.track_op(), w.track_op());
        let (dx, dw) = with_f32(x, |xs| {
            with_f32(w, |ws| {
                with_f32(dy, |dys| {
                    Ok(if d.depthwise() {
                        depthwise_backward(&d, xs, ws, dys, need_dx, need_dw)
                    } else if let Some(t) = d.tap_rows() {
                        tap_rows_backward(&d, t, xs, ws, dys, need_dx, need_dw)
                    } else {
                        gemm_backward(&d, xs, ws, dys, need_dx, need_dw)
                    })
                })
            })
        })?;
        let dx = match dx {
            Some(v) => Some(tensor(v, x.dims())?),
            None => None,
        };
        let dw = match dw {
            Some(v) => Some(tensor(v, w.dims())?),
            None => None,
        };
        Ok((dx, dw))
    }
}

/// Convolution of `x` (N x C x H x W) with `weight` (O x C/groups x k x k) on the fast CPU
/// kernels, with gradients for both. Both must be f32 on the CPU.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    Dims::new(x.dims(), weight.dims(), stride, padding, groups)?;
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    x.apply_op2(
        &weight,
        Conv2dOp {
            stride,
            pad: padding,
            groups,
        },
    )
}

fn gemm_forward(d: &Dims, x: &[f32], w: &[f32]) -> Vec<f32> {
    let g = d.g;
    let (kg, ncols, og) = (g.rows(), g.cols(), d.cout / d.groups);
    let (in_img, out_img) = (d.in_image(), d.out_image());
    let gemm_threads = image_gemm_threads(d.n);
    let body = |(i, yi): (usize, &mut [MaybeUninit<f32>])| {
        let xi = &x[i * in_img..(i + 1) * in_img];
        let mut cols = (!g.is_identity()).then(|| Scratch::uninit(kg * ncols));
        for gi in 0..d.groups {
            let xg = &xi[gi * g.c * g.h * g.w..(gi + 1) * g.c * g.h * g.w];
            if let Some(c) = cols.as_mut() {
                im2col(xg, &g, c);
            }
            let cm: &[f32] = cols.as_deref().unwrap_or(xg);
            let wg = &w[gi * og * kg..(gi + 1) * og * kg];
            sgemm_into(
                &mut yi[gi * og * ncols..(gi + 1) * og * ncols],
                Mat::rows(wg, og, kg),
                Mat::rows(cm, kg, ncols),
                gemm_threads,
            );
        }
    };
    // SAFETY: `body`'s products write the `og * ncols` values of each of the `groups` groups:
    // `cout * ho * wo == out_img` in all.
    #[allow(unsafe_code)]
    unsafe {
        per_image_output(d.n, out_img, body)
    }
}

/// Threads gemm may use inside one image's products: one when the images run in parallel (at
/// least as many images as threads), all of them otherwise (batch-1 latency).
fn image_gemm_threads(n: usize) -> usize {
    let t = threads();
    if n >= t { 1 } else { t }
}

/// The output of a per-image forward pass: `n` images of `out_img` values, `body` called with
/// each image's index and values, the images in parallel when [`image_gemm_threads`] is one.
///
/// # Safety
/// `body` must write every one of the `out_img` values it is handed.
#[allow(unsafe_code)]
unsafe fn per_image_output<F>(n: usize, out_img: usize, body: F) -> Vec<f32>
where
    F: Fn((usize, &mut [MaybeUninit<f32>])) + Sync + Send,
{
    if out_img == 0 {
        return Vec::new();
    }
    let fill = |y: &mut [MaybeUninit<f32>]| {
        if image_gemm_threads(n) == 1 {
            y.par_chunks_mut(out_img).enumerate().for_each(&body);
        } else {
            y.chunks_mut(out_img).enumerate().for_each(&body);
        }
    };
    // SAFETY: `fill` hands each of the `n` images' `out_img` values to `body`, which writes
    // every one of them (this function's contract).
    unsafe { filled_by(n * out_img, fill).0 }
}

type Grads = (Option<Vec<f32>>, Option<Vec<f32>>);

/// How a backward pass splits the batch: contiguous runs of images, each summing its own weight
/// gradient, the runs' partials then summed in run order. The split depends on the batch alone,
/// never on the thread count: where the partial sums break is part of the arithmetic, so a split
/// by threads made weights differ between a 1- and a 2-thread run (and between machines).
/// [`BACKWARD_CHUNKS`] runs keep every thread of a usual machine busy; gemm splits each product
/// (over rows and columns, which does not change any sum) only when there are fewer runs than
/// threads.
#[derive(Debug, Clone, Copy)]
struct Chunks {
    per_chunk: usize,
    count: usize,
    gemm_threads: usize,
}

/// Runs of images per backward pass (fewer when the batch is smaller). A fixed number, not the
/// thread count: see [`Chunks`]. 16 partial weight gradients cost one extra pass over 16 copies
/// of a layer's weights per step, small beside the products.
const BACKWARD_CHUNKS: usize = 16;

impl Chunks {
    fn new(n: usize) -> Self {
        let per_chunk = n.div_ceil(BACKWARD_CHUNKS.min(n).max(1)).max(1);
        let count = n.div_ceil(per_chunk);
        let t = threads();
        Self {
            per_chunk,
            count,
            gemm_threads: if count >= t { 1 } else { t },
        }
    }
}

/// Runs `process(the chunk's images, their slice of the input gradient)` over the chunks in
/// parallel and returns the input gradient (when `need_dx`) and the chunks' weight-gradient
/// partials of `wlen` values summed (when `need_dw`). The partials are summed in chunk order: a fixed order
/// keeps training bit-reproducible (a rayon `reduce` would group the sums by how work was
/// stolen).
fn run_chunks<F>(
    n: usize,
    in_img: usize,
    wlen: usize,
    chunks: Chunks,
    need_dx: bool,
    need_dw: bool,
    process: F,
) -> (Option<Vec<f32>>, Option<Vec<f32>>)
where
    F: Fn(Range<usize>, Option<&mut [f32]>) -> Vec<f32> + Sync,
{
    let images = |ci: usize| ci * chunks.per_chunk..((ci + 1) * chunks.per_chunk).min(n);
    let (dx, partials): (Option<Vec<f32>>, Vec<Vec<f32>>) = if need_dx {
        let mut dx = vec![0f32; n * in_img];
        let partials = if in_img == 0 {
            Vec::new()
        } else {
            dx.par_chunks_mut(chunks.per_chunk * in_img)
                .enumerate()
                .map(|(ci, c)| process(images(ci), Some(c)))
                .collect()
        };
        (Some(dx), partials)
    } else {
        let partials = (0..chunks.count)
            .into_par_iter()
            .map(|ci| process(images(ci), None))
            .collect();
        (None, partials)
    };
    if !need_dw {
        return (dx, None);
    }
    let mut dw = vec![0f32; wlen];
    for p in partials.iter().filter(|p| p.len() == wlen) {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += *b;
        }
    }
    (dx, Some(dw))
}

fn gemm_backward(
    d: &Dims,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
) -> Grads {
    let g = d.g;
    let (kg, ncols, og) = (g.rows(), g.cols(), d.cout / d.groups);
    let (in_img, out_img) = (d.in_image(), d.out_image());
    let gplane = g.c * g.h * g.w;
    let chunks = Chunks::new(d.n);
    let gemm_threads = chunks.gemm_threads;
    let wlen = d.cout * kg;

    // W^T per group, row-major (kg x og), so the input-gradient product reads its right operand
    // along the contraction (gemm then packs nothing per image).
    let wt: Vec<f32> = if need_dx {
        let mut t = vec![0f32; wlen];
        for gi in 0..d.groups {
            let r = gi * og * kg..(gi + 1) * og * kg;
            transpose(&w[r.clone()], og, kg, &mut t[r]);
        }
        t
    } else {
        Vec::new()
    };

    let process = |images: Range<usize>, mut dx_chunk: Option<&mut [f32]>| -> Vec<f32> {
        // The weight gradient is accumulated transposed, dW^T (kg x og per group) += cols x
        // dY^T, with dY^T made per image: gemm wants its left operand contiguous along the
        // output rows, and both dY and cols are contiguous along the contraction (the output
        // positions). Written as dW += dY x cols^T, gemm gathered the whole column matrix with
        // a strided copy for every image (a fifth of ResNet-20's training time).
        let mut dwt = if need_dw {
            vec![0f32; wlen]
        } else {
            Vec::new()
        };
        let mut dyt = need_dw.then(|| Scratch::uninit(og * ncols));
        let mut cols = (!g.is_identity() && need_dw).then(|| Scratch::uninit(kg * ncols));
        let mut dcols = (!g.is_identity() && need_dx).then(|| Scratch::uninit(kg * ncols));
        let first = images.start;
        for i in images {
            let xi = &x[i * in_img..(i + 1) * in_img];
            let dyi = &dy[i * out_img..(i + 1) * out_img];
            let mut dxi = dx_chunk
                .as_deref_mut()
                .map(|c| &mut c[(i - first) * in_img..(i - first + 1) * in_img]);
            for gi in 0..d.groups {
                let dyg_data = &dyi[gi * og * ncols..(gi + 1) * og * ncols];
                let dyg = Mat::rows(dyg_data, og, ncols);
                let xg = &xi[gi * gplane..(gi + 1) * gplane];
                if let Some(dyt) = dyt.as_mut() {
                    if let Some(c) = cols.as_mut() {
                        im2col(xg, &g, c);
                    }
                    let cm: &[f32] = cols.as_deref().unwrap_or(xg);
                    transpose(dyg_data, og, ncols, dyt);
                    sgemm(
                        &mut dwt[gi * og * kg..(gi + 1) * og * kg],
                        Mat::rows(cm, kg, ncols),
                        Mat::rows(dyt, ncols, og),
                        true,
                        gemm_threads,
                    );
                }
                if let Some(dxi) = dxi.as_deref_mut() {
                    let dxg = &mut dxi[gi * gplane..(gi + 1) * gplane];
                    let wtg = Mat::rows(&wt[gi * og * kg..(gi + 1) * og * kg], kg, og);
                    match dcols.as_mut() {
                        Some(dc) => {
                            sgemm(dc, wtg, dyg, false, gemm_threads);
                            col2im(dc, &g, dxg);
                        }
                        None => sgemm(dxg, wtg, dyg, false, gemm_threads),
                    }
                }
            }
        }
        dwt
    };

    let (dx, dwt) = run_chunks(d.n, in_img, wlen, chunks, need_dx, need_dw, process);
    let Some(dwt) = dwt else {
        return (dx, None);
    };
    // Back from dW^T (kg x og per group) to the weight's layout, once for the whole batch.
    let mut dw = vec![0f32; wlen];
    for gi in 0..d.groups {
        let r = gi * og * kg..(gi + 1) * og * kg;
        transpose(&dwt[r.clone()], kg, og, &mut dw[r]);
    }
    (dx, Some(dw))
}
