//! One convolution or linear layer on integers, and how its inputs are laid out for the byte
//! dot products of [`super::dot`].
//!
//! One formula for every layer and every layout, so every kernel path gives the same numbers:
//! - input: `x_q = clamp(zp + round_half_even(x * (1 / s_x)), 0, 127)` (the fake quantizer's
//!   integer, so a convolution's zero padding is `zp`);
//! - accumulate: `acc[c] = sum(x_q * w_q[c]) - zp * sum(w_q[c])` exactly in i32 (with inputs at
//!   most 127 and weights in -128..127 no partial sum can overflow or saturate);
//! - output: `y[c] = (acc[c] as f32) * m[c] + b[c]` with `m[c] = s_x * s_w[c]` in f32 and the
//!   folded bias `b`, then the layer's ReLU if it has one.
//!
//! Two input layouts:
//! - **Blocked** (stride-1 ungrouped convolutions, most of a ResNet; a linear layer's weights are
//!   the same in both layouts): the input is quantized
//!   straight into `[cin / 4][h + 2p][w + 2p][4]`, padded with `zp`. Output pixels are computed on
//!   the padded width (`q = oh * (w + 2p) + ow`, the last `2p` columns of each row discarded), so
//!   the four channels of block `cb` at kernel tap `(ki, kj)` are, for consecutive `q`, one
//!   contiguous window of the input shifted by `ki * (w + 2p) + kj`: an implicit GEMM with no
//!   patch copies.
//! - **Patches** (strided and grouped convolutions, linear layers): patches are gathered into
//!   `[k / 4][pixel][4]`.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::QParams;
use super::dot::{self, PIXELS, padded_k, padded_pixels};
use super::lanes::{Output, Quantizer, quantize};

/// How a layer's inputs reach the products (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputLayout {
    /// Channel blocks of four, padded, read in place.
    Blocked,
    /// Gathered patches.
    Patches,
}

/// A layer's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Input channels (a linear layer's inputs).
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel side (1 for a linear layer).
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
    /// Groups.
    pub groups: usize,
}

impl Geometry {
    /// A linear layer's: a 1x1 convolution of one pixel.
    pub fn linear(cin: usize, cout: usize) -> Self {
        Self {
            cin,
            cout,
            k: 1,
            stride: 1,
            padding: 0,
            groups: 1,
        }
    }
}

/// One layer on integers.
#[derive(Debug, Clone)]
pub struct Int8Layer {
    /// Its shape.
    pub geometry: Geometry,
    /// The int8 weights, `cout` rows of `(cin / groups) x k x k` in PyTorch's order (what the
    /// int8 file stores).
    pub values: Vec<i8>,
    /// The input's quantization parameters.
    pub input: QParams,
    /// Each output channel's weight scale `s_w[c]`.
    pub weight_scale: Vec<f32>,
    /// `s_x * s_w[c]` per output channel.
    pub multiplier: Vec<f32>,
    /// Float bias per output channel (the folded batch norm's shift).
    pub bias: Vec<f32>,
    /// `zp * sum(w_q[c])` per output channel.
    pub zero_correction: Vec<i32>,
    /// How inputs are laid out.
    pub layout: InputLayout,
    /// The weights as the products read them: `cout` rows of `row` bytes, in groups of four `k`
    /// matching the input layout.
    weight: Vec<i8>,
    /// Bytes per row of `weight`.
    row: usize,
}

impl Int8Layer {
    /// A layer from its int8 weights (`cout` rows of `(cin / groups) x k x k`), per-channel
    /// weight scales, input parameters and float bias.
    pub fn new(
        geometry: Geometry,
        values: Vec<i8>,
        weight_scale: Vec<f32>,
        input: QParams,
        bias: Vec<f32>,
    ) -> Self {
        let g = geometry;
        let kk = g.cin / g.groups * g.k * g.k;
        // A 1x1 kernel's blocked weights are its plain rows: linear layers use either.
        let layout = if g.groups == 1 && g.stride == 1 {
            InputLayout::Blocked
        } else {
            InputLayout::Patches
        };
        let (weight, row) = match layout {
            InputLayout::Patches => {
                let row = padded_k(kk);
                let mut w = vec![0i8; g.cout * row];
                for (dst, src) in w.chunks_mut(row).zip(values.chunks(kk)) {
                    dst[..kk].copy_from_slice(src);
                }
                (w, row)
            }
            InputLayout::Blocked => {
                let (blocks, taps) = (g.cin.div_ceil(4), g.k * g.k);
                let row = blocks * taps * 4;
                let mut w = vec![0i8; g.cout * row];
                for (dst, src) in w.chunks_mut(row).zip(values.chunks(kk)) {
                    for ci in 0..g.cin {
                        for t in 0..taps {
                            dst[((ci / 4) * taps + t) * 4 + ci % 4] = src[ci * taps + t];
                        }
                    }
                }
                (w, row)
            }
        };
        let zero_correction = values
            .chunks(kk.max(1))
            .map(|r| input.zero_point * r.iter().map(|&v| i32::from(v)).sum::<i32>())
            .collect();
        let multiplier = weight_scale.iter().map(|s| input.scale * s).collect();
        Self {
            geometry,
            values,
            input,
            weight_scale,
            multiplier,
            bias,
            zero_correction,
            layout,
            weight,
            row,
        }
    }

    /// Bytes of the layer in the int8 file: the weights, and per output channel a scale, a zero
    /// point and the bias (4 bytes each).
    pub fn bytes(&self) -> usize {
        self.values.len() + 12 * self.geometry.cout
    }

    /// Output height and width for an `h x w` input.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let g = &self.geometry;
        (
            (h + 2 * g.padding - g.k) / g.stride + 1,
            (w + 2 * g.padding - g.k) / g.stride + 1,
        )
    }

    /// The layer on a batch of `n` images `x` (`n x cin x h x w` floats), giving
    /// `n x cout x ho x wo` floats, with the ReLU when `relu`. A batch of at least one image per
    /// thread runs image by image in parallel, each thread reusing its buffers; a smaller one
    /// (batch-1 latency) lays out its inputs in parallel, then computes every (image, block of
    /// four output channels) in parallel, so that a single image uses every thread too.
    pub fn conv(&self, x: &[f32], n: usize, h: usize, w: usize, relu: bool) -> Vec<f32> {
        self.conv_by(x, (n, h, w), relu, n >= rayon::current_num_threads())
    }

    /// [`Self::conv`], image by image or not.
    fn conv_by(
        &self,
        x: &[f32],
        (n, h, w): (usize, usize, usize),
        relu: bool,
        by_image: bool,
    ) -> Vec<f32> {
        let g = &self.geometry;
        let (ho, wo) = self.output_size(h, w);
        let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
        let plane = ho * wo;
        let group_input = |ig: usize| {
            let (img, gi) = (ig / g.groups, ig % g.groups);
            let first = (img * g.cin + gi * cin_g) * h * w;
            &x[first..first + cin_g * h * w]
        };
        // Every output is written below (each plane row by row), so the buffer is not zeroed
        // first: at batch 256 the zeroing cost as much as a tenth of the layer.
        let total = n * g.cout * plane;
        let mut out: Vec<f32> = Vec::with_capacity(total);
        let y_all = &mut out.spare_capacity_mut()[..total];
        if by_image {
            y_all
                .par_chunks_mut(g.cout * plane)
                .enumerate()
                .for_each(|(img, y_img)| {
                    SCRATCH.with(|scratch| {
                        let mut guard = scratch.borrow_mut();
                        let Scratch { bytes, acc } = &mut *guard;
                        for (gi, y_group) in y_img.chunks_mut(cout_g * plane).enumerate() {
                            let grid = self.lay_out(group_input(img * g.groups + gi), h, w, bytes);
                            self.products(
                                &grid,
                                bytes,
                                gi * cout_g,
                                y_group,
                                (plane, wo),
                                relu,
                                acc,
                            );
                        }
                    });
                });
        } else {
            let inputs = (0..n * g.groups).map(group_input).collect();
            self.by_channel_blocks(inputs, (h, w), relu, y_all);
        }
        // SAFETY: `products` wrote all `total` values (every row of every plane).
        unsafe { out.set_len(total) };
        out
    }

    /// The schedule for small batches: every (image, group) input laid out in parallel, then
    /// every (image, group, block of four output channels) computed in parallel.
    fn by_channel_blocks(
        &self,
        inputs: Vec<&[f32]>,
        (h, w): (usize, usize),
        relu: bool,
        y_all: &mut [MaybeUninit<f32>],
    ) {
        let g = &self.geometry;
        let (ho, wo) = self.output_size(h, w);
        let (plane, cout_g) = (ho * wo, g.cout / g.groups);
        let laid: Vec<(Grid, Vec<u8>)> = inputs
            .into_par_iter()
            .map(|xi| {
                let mut bytes = Vec::new();
                let grid = self.lay_out(xi, h, w, &mut bytes);
                (grid, bytes)
            })
            .collect();
        let mut tasks: Vec<(usize, usize, &mut [MaybeUninit<f32>])> = Vec::new();
        for (img, y_img) in y_all.chunks_mut(g.cout * plane).enumerate() {
            for (gi, y_group) in y_img.chunks_mut(cout_g * plane).enumerate() {
                for (b, y_block) in y_group.chunks_mut(4 * plane).enumerate() {
                    tasks.push((img * g.groups + gi, gi * cout_g + b * 4, y_block));
                }
            }
        }
        tasks.into_par_iter().for_each(|(ig, co0, y)| {
            let (grid, bytes) = &laid[ig];
            self.products(grid, bytes, co0, y, (plane, wo), relu, &mut Vec::new());
        });
    }

    /// One image's input channels of one group (`xi`, `h x w`) quantized into `bytes` in the
    /// layer's layout; returns where the products read them.
    fn lay_out(&self, xi: &[f32], h: usize, w: usize, bytes: &mut Vec<u8>) -> Grid {
        let g = &self.geometry;
        let (ho, wo) = self.output_size(h, w);
        let cin_g = g.cin / g.groups;
        match self.layout {
            InputLayout::Blocked => {
                let (hp, wp) = (h + 2 * g.padding, w + 2 * g.padding);
                let pixels = padded_pixels(ho * wp);
                self.blocked_input(xi, h, w, pixels, bytes);
                let offsets = (0..cin_g.div_ceil(4))
                    .flat_map(|cb| {
                        (0..g.k * g.k).map(move |t| cb * hp * wp + (t / g.k) * wp + t % g.k)
                    })
                    .collect();
                Grid {
                    offsets,
                    row_stride: wp,
                    pixels,
                }
            }
            InputLayout::Patches => {
                let pixels = padded_pixels(ho * wo);
                let q = quantize(xi, self.input);
                self.patches(&q, cin_g, h, w, ho, wo, pixels, bytes);
                Grid {
                    offsets: (0..self.row / 4).map(|k| k * pixels).collect(),
                    row_stride: wo,
                    pixels,
                }
            }
        }
    }

    /// Output channels `co0..` (as many as `y` holds planes of `plane = ho x wo`) from an
    /// input laid out by [`Self::lay_out`], through the byte products and the output formula;
    /// `acc` is scratch.
    #[allow(clippy::too_many_arguments)]
    fn products(
        &self,
        grid: &Grid,
        bytes: &[u8],
        co0: usize,
        y: &mut [MaybeUninit<f32>],
        (plane, wo): (usize, usize),
        relu: bool,
        acc: &mut Vec<i32>,
    ) {
        let rows = y.len() / plane;
        acc.resize(rows * grid.pixels, 0);
        let weights = &self.weight[co0 * self.row..(co0 + rows) * self.row];
        dot::matmul(bytes, &grid.offsets, grid.pixels, weights, rows, acc);
        for (j, (yc, ac)) in y.chunks_mut(plane).zip(acc.chunks(grid.pixels)).enumerate() {
            let co = co0 + j;
            let out = Output {
                zc: self.zero_correction[co],
                m: self.multiplier[co],
                b: self.bias[co],
                relu,
            };
            out.plane(ac, grid.row_stride, yc, wo);
        }
    }

    /// The layer as a linear one on `n` rows of `cin` floats, giving `n x cout` floats. The
    /// batch rows are the "pixels" of the product.
    pub fn linear(&self, x: &[f32], n: usize) -> Vec<f32> {
        let cin = self.geometry.cin;
        let pixels = padded_pixels(n);
        let mut packed = vec![0u8; self.row * pixels];
        let q = quantize(x, self.input);
        for (i, xr) in q.chunks(cin).enumerate() {
            for (kidx, &v) in xr.iter().enumerate() {
                packed[((kidx / 4) * pixels + i) * 4 + kidx % 4] = v;
            }
        }
        let cout = self.geometry.cout;
        let offsets: Vec<usize> = (0..self.row / 4).map(|k| k * pixels).collect();
        let mut acc = vec![0i32; cout * pixels];
        dot::matmul(&packed, &offsets, pixels, &self.weight, cout, &mut acc);
        let mut out = vec![0f32; n * cout];
        for (i, y) in out.chunks_mut(cout).enumerate() {
            for (o, v) in y.iter_mut().enumerate() {
                *v = (acc[o * pixels + i] - self.zero_correction[o]) as f32 * self.multiplier[o]
                    + self.bias[o];
            }
        }
        out
    }

    /// One image's channels quantized into `[cin / 4][h + 2p][w + 2p][4]`, the border holding
    /// the zero point and channels past `cin` zeros, with room for `pixels` outputs read at the
    /// last tap.
    fn blocked_input(&self, xi: &[f32], h: usize, w: usize, pixels: usize, out: &mut Vec<u8>) {
        let g = &self.geometry;
        let (p, k) = (g.padding, g.k);
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        let blocks = g.cin.div_ceil(4);
        let last = (blocks - 1) * hp * wp + (k - 1) * wp + (k - 1) + pixels;
        let len = (blocks * hp * wp).max(last) + PIXELS;
        let zp = self.input.zero_point.clamp(0, 127) as u8;
        // Bytes past the last block are read only for discarded pixels; any value does.
        out.resize(len * 4, 0);
        // The image's channels quantized in one pass, then interleaved four channels per pixel;
        // channels past `cin` are zeros.
        QUANTIZED.with(|q| {
            let mut q = q.borrow_mut();
            q.resize(xi.len(), 0);
            Quantizer::new(self.input).row(xi, &mut q);
            self.interleave(&q, (h, w), (hp, wp), zp, out);
        });
    }

    /// The quantized channels `q` (`cin x h x w`) into `out`'s blocks of four channels, the
    /// border holding `zp` (see [`Self::blocked_input`]).
    fn interleave(
        &self,
        q: &[u8],
        (h, w): (usize, usize),
        (hp, wp): (usize, usize),
        zp: u8,
        out: &mut [u8],
    ) {
        let g = &self.geometry;
        let p = g.padding;
        let blocks = g.cin.div_ceil(4);
        let plane = |c: usize| (c < g.cin).then(|| &q[c * h * w..(c + 1) * h * w]);
        for cb in 0..blocks {
            let block = &mut out[cb * hp * wp * 4..(cb + 1) * hp * wp * 4];
            let zps: [u8; 4] = std::array::from_fn(|r| if cb * 4 + r < g.cin { zp } else { 0 });
            let planes: [Option<&[u8]>; 4] = std::array::from_fn(|r| plane(cb * 4 + r));
            for (ih, dst) in block.chunks_exact_mut(wp * 4).enumerate() {
                if ih < p || ih >= h + p {
                    dst.chunks_exact_mut(4)
                        .for_each(|px| px.copy_from_slice(&zps));
                    continue;
                }
                let (left, rest) = dst.split_at_mut(p * 4);
                let (middle, right) = rest.split_at_mut(w * 4);
                for px in left.chunks_exact_mut(4).chain(right.chunks_exact_mut(4)) {
                    px.copy_from_slice(&zps);
                }
                let at = (ih - p) * w;
                let row = |r: usize| planes[r].map(|pl| &pl[at..at + w]);
                match (row(0), row(1), row(2), row(3)) {
                    (Some(a), Some(b), Some(c), Some(d)) => {
                        for (iw, px) in middle.chunks_exact_mut(4).enumerate() {
                            px.copy_from_slice(&[a[iw], b[iw], c[iw], d[iw]]);
                        }
                    }
                    rows => {
                        let rows = [rows.0, rows.1, rows.2, rows.3];
                        for (iw, px) in middle.chunks_exact_mut(4).enumerate() {
                            for (r, v) in px.iter_mut().enumerate() {
                                *v = rows[r].map_or(0, |x| x[iw]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The patches of one image's channels of one group, packed `[k / 4][pixel][4]` with `k` in
    /// (channel, kernel row, kernel column) order as the weights, taps outside the image holding
    /// the zero point, `k` and pixel padding zeros.
    #[allow(clippy::too_many_arguments)]
    fn patches(
        &self,
        xi: &[u8],
        cin_g: usize,
        h: usize,
        w: usize,
        ho: usize,
        wo: usize,
        pixels: usize,
        packed: &mut Vec<u8>,
    ) {
        let g = &self.geometry;
        let (k, s, p) = (g.k, g.stride, g.padding);
        let zp = self.input.zero_point.clamp(0, 127) as u8;
        // Lanes past `k` meet zero weights and pixels past the plane are discarded: a reused
        // buffer's old bytes there do not matter.
        packed.resize(self.row * pixels, 0);
        for ci in 0..cin_g {
            let src = &xi[ci * h * w..(ci + 1) * h * w];
            for ki in 0..k {
                for kj in 0..k {
                    let kidx = (ci * k + ki) * k + kj;
                    let (base, lane) = ((kidx / 4) * pixels * 4, kidx % 4);
                    // Output columns whose tap falls inside the image: ow * s + kj - p in [0, w).
                    let lo = p.saturating_sub(kj).div_ceil(s).min(wo);
                    let hi = if w + p > kj {
                        ((w + p - kj - 1) / s + 1).min(wo)
                    } else {
                        0
                    }
                    .max(lo);
                    for oh in 0..ho {
                        let dst = &mut packed[base + oh * wo * 4..base + (oh + 1) * wo * 4];
                        let ih = (oh * s + ki) as isize - p as isize;
                        if ih < 0 || ih >= h as isize {
                            dst.iter_mut().skip(lane).step_by(4).for_each(|v| *v = zp);
                            continue;
                        }
                        let row = &src[ih as usize * w..(ih as usize + 1) * w];
                        for ow in (0..lo).chain(hi..wo) {
                            dst[ow * 4 + lane] = zp;
                        }
                        for ow in lo..hi {
                            dst[ow * 4 + lane] = row[ow * s + kj - p];
                        }
                    }
                }
            }
        }
    }
}

/// Where the products read a laid-out input (see [`super::dot::matmul`]).
struct Grid {
    /// Pixel offset of each group of four `k`.
    offsets: Vec<usize>,
    /// Pixels computed per output row (the padded width for the blocked layout).
    row_stride: usize,
    /// Pixels computed, padded.
    pixels: usize,
}

/// A thread's reused buffers: laid-out input bytes and accumulators.
#[derive(Default)]
struct Scratch {
    bytes: Vec<u8>,
    acc: Vec<i32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
    /// A thread's quantized input channels, before they are laid out.
    static QUANTIZED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layer's formula computed directly, tap by tap, from its PyTorch-order weights.
    fn naive(l: &Int8Layer, x: &[f32], n: usize, h: usize, w: usize, relu: bool) -> Vec<f32> {
        let g = &l.geometry;
        let (ho, wo) = l.output_size(h, w);
        let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
        let kk = cin_g * g.k * g.k;
        let q = quantize(x, l.input);
        let zp = l.input.zero_point;
        let mut out = Vec::new();
        for img in 0..n {
            for co in 0..g.cout {
                let gi = co / cout_g;
                for oh in 0..ho {
                    for ow in 0..wo {
                        let mut acc = 0i32;
                        for ci in 0..cin_g {
                            for ki in 0..g.k {
                                for kj in 0..g.k {
                                    let ih = (oh * g.stride + ki) as isize - g.padding as isize;
                                    let iw = (ow * g.stride + kj) as isize - g.padding as isize;
                                    let inside =
                                        ih >= 0 && iw >= 0 && ih < h as isize && iw < w as isize;
                                    let v = if inside {
                                        let c = gi * cin_g + ci;
                                        i32::from(
                                            q[((img * g.cin + c) * h + ih as usize) * w
                                                + iw as usize],
                                        )
                                    } else {
                                        zp
                                    };
                                    let wv = l.values[co * kk + (ci * g.k + ki) * g.k + kj];
                                    acc += v * i32::from(wv);
                                }
                            }
                        }
                        let v =
                            (acc - l.zero_correction[co]) as f32 * l.multiplier[co] + l.bias[co];
                        out.push(if relu { v.max(0.0) } else { v });
                    }
                }
            }
        }
        out
    }

    fn lcg(seed: u64) -> impl FnMut() -> u32 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        }
    }

    #[test]
    fn integer_convolutions_match_the_formula_tap_by_tap_in_both_layouts() {
        let mut next = lcg(7);
        // (cin, cout, k, stride, padding, groups, h, w, layout)
        for (cin, cout, k, stride, padding, groups, h, w, layout) in [
            (3, 5, 3, 1, 1, 1, 7, 6, InputLayout::Blocked),
            (6, 9, 3, 1, 1, 1, 8, 8, InputLayout::Blocked),
            (2, 3, 5, 1, 2, 1, 4, 4, InputLayout::Blocked),
            (5, 4, 3, 1, 0, 1, 6, 7, InputLayout::Blocked),
            (4, 6, 3, 2, 1, 1, 8, 9, InputLayout::Patches),
            (6, 6, 3, 1, 1, 6, 5, 5, InputLayout::Patches),
            (4, 8, 1, 2, 0, 1, 6, 6, InputLayout::Patches),
            (8, 4, 1, 1, 0, 1, 5, 5, InputLayout::Blocked),
        ] {
            let geometry = Geometry {
                cin,
                cout,
                k,
                stride,
                padding,
                groups,
            };
            let kk = cin / groups * k * k;
            let values: Vec<i8> = (0..cout * kk).map(|_| (next() % 256) as u8 as i8).collect();
            let input = QParams {
                scale: 0.05,
                zero_point: (next() % 128) as i32,
            };
            let l = Int8Layer::new(
                geometry,
                values,
                (0..cout).map(|c| 0.2 * (c + 1) as f32).collect(),
                input,
                (0..cout).map(|c| c as f32 - 1.5).collect(),
            );
            assert_eq!(l.layout, layout);
            let n = 2;
            // Values spanning the whole input range and beyond (clamped at both ends).
            let x: Vec<f32> = (0..n * cin * h * w)
                .map(|_| (next() % 1000) as f32 / 100.0 - 5.0)
                .collect();
            for (relu, by_image) in [(false, false), (true, false), (false, true), (true, true)] {
                assert_eq!(
                    l.conv_by(&x, (n, h, w), relu, by_image),
                    naive(&l, &x, n, h, w, relu),
                    "{cin} {cout} k{k} s{stride} p{padding} g{groups} relu {relu} by image \
                     {by_image}"
                );
            }
        }
    }

    #[test]
    fn a_linear_layer_is_a_one_by_one_convolution() {
        let mut next = lcg(11);
        let (cin, cout, n) = (10, 7, 5);
        let geometry = Geometry::linear(cin, cout);
        let values: Vec<i8> = (0..cout * cin)
            .map(|_| (next() % 256) as u8 as i8)
            .collect();
        let l = Int8Layer::new(
            geometry,
            values,
            vec![0.1; cout],
            QParams {
                scale: 0.03,
                zero_point: 60,
            },
            (0..cout).map(|c| c as f32).collect(),
        );
        let x: Vec<f32> = (0..n * cin)
            .map(|_| (next() % 400) as f32 / 100.0 - 2.0)
            .collect();
        assert_eq!(l.linear(&x, n), naive(&l, &x, n, 1, 1, false));
    }
}
