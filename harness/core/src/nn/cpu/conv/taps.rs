//! Stride-1 "same" convolutions by kernel rows: the image is copied once per kernel column and
//! every kernel row is an offset into that copy ([`TapRows`]), so a k x k convolution is k
//! products summed instead of one product over an im2col matrix k times the image's size.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::super::gemm::{Mat, sgemm, sgemm_strided, sgemm_sum_into, transpose};
use super::super::tap_rows::TapRows;
use super::super::workspace::Scratch;
use super::{Chunks, Dims, Grads, image_gemm_threads, per_image_output, run_chunks};

/// The weight (O x C x k x k) regrouped per kernel row: block `ki` is `W_ki` (O x C*k,
/// row-major, columns (channel, kernel column)), or its transpose with `transposed`.
fn weight_by_kernel_row(w: &[f32], cout: usize, t: TapRows, transposed: bool) -> Vec<f32> {
    let (k, kc) = (t.k(), t.rows());
    let mut out = vec![0f32; w.len()];
    for (co, wo) in w.chunks_exact(kc * k).enumerate() {
        for (r, taps) in wo.chunks_exact(k).enumerate() {
            // r = ci * k + ki over (channel, kernel row); taps runs over the kernel columns.
            let (ci, ki) = (r / k, r % k);
            for (kj, &v) in taps.iter().enumerate() {
                let col = ci * k + kj;
                let at = if transposed {
                    col * cout + co
                } else {
                    co * kc + col
                };
                out[ki * cout * kc + at] = v;
            }
        }
    }
    out
}

/// Forward of a stride-1 "same" convolution as k products per image, one per kernel row, over
/// the image expanded along the kernel columns only (see [`tap_rows`](super::tap_rows)).
pub(super) fn tap_rows_forward(d: &Dims, t: TapRows, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (kc, ncols, pitch) = (t.rows(), t.cols(), t.pitch());
    let (in_img, out_img) = (d.in_image(), d.out_image());
    let wr = weight_by_kernel_row(w, d.cout, t, false);
    let gemm_threads = image_gemm_threads(d.n);
    let body = |(i, yi): (usize, &mut [MaybeUninit<f32>])| {
        let mut taps = Scratch::uninit(t.len());
        t.expand(&x[i * in_img..(i + 1) * in_img], &mut taps);
        let taps = &taps[..];
        let terms = (0..t.k()).map(|ki| {
            (
                Mat::rows(&wr[ki * d.cout * kc..(ki + 1) * d.cout * kc], d.cout, kc),
                Mat::strided(&taps[t.offset(ki)..], kc, ncols, pitch),
            )
        });
        sgemm_sum_into(yi, terms, gemm_threads);
    };
    // SAFETY: `body`'s summed products write all `cout * h * w == out_img` values.
    #[allow(unsafe_code)]
    unsafe {
        per_image_output(d.n, out_img, body)
    }
}

/// Backward of [`tap_rows_forward`]: per kernel row, `dW_ki^T += taps_ki x dY^T` and
/// `dtaps_ki += W_ki^T x dY` (into the expanded buffer, rows `pitch` apart), then the expanded
/// gradient folded back onto the image.
pub(super) fn tap_rows_backward(
    d: &Dims,
    t: TapRows,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
) -> Grads {
    let (k, kc, ncols, pitch, cout) = (t.k(), t.rows(), t.cols(), t.pitch(), d.cout);
    let (in_img, out_img) = (d.in_image(), d.out_image());
    let chunks = Chunks::new(d.n);
    let gemm_threads = chunks.gemm_threads;
    let wlen = w.len();
    let wrt = if need_dx {
        weight_by_kernel_row(w, cout, t, true)
    } else {
        Vec::new()
    };
    // The products run the centre kernel row first: it covers the body of every buffer row, so
    // it writes instead of adding, and only the padding rows need clearing for the others.
    let order: Vec<usize> = std::iter::once(k / 2)
        .chain((0..k).filter(|&ki| ki != k / 2))
        .collect();

    let process = |images: Range<usize>, mut dx_chunk: Option<&mut [f32]>| -> Vec<f32> {
        // dW^T per kernel row (C*k x O), summed over this chunk's images.
        let mut dwt = if need_dw {
            vec![0f32; wlen]
        } else {
            Vec::new()
        };
        let mut dyt = need_dw.then(|| Scratch::uninit(cout * ncols));
        let mut taps = need_dw.then(|| Scratch::uninit(t.len()));
        let mut dtaps = need_dx.then(|| Scratch::uninit(t.len()));
        let first = images.start;
        for i in images {
            let dyi = &dy[i * out_img..(i + 1) * out_img];
            if let (Some(dyt), Some(taps)) = (dyt.as_mut(), taps.as_mut()) {
                t.expand(&x[i * in_img..(i + 1) * in_img], taps);
                transpose(dyi, cout, ncols, dyt);
                for ki in 0..k {
                    sgemm(
                        &mut dwt[ki * kc * cout..(ki + 1) * kc * cout],
                        Mat::strided(&taps[t.offset(ki)..], kc, ncols, pitch),
                        Mat::rows(dyt, ncols, cout),
                        true,
                        gemm_threads,
                    );
                }
            }
            if let (Some(dtaps), Some(dx_chunk)) = (dtaps.as_mut(), dx_chunk.as_deref_mut()) {
                t.clear_padding(dtaps);
                for (j, &ki) in order.iter().enumerate() {
                    sgemm_strided(
                        &mut dtaps[t.offset(ki)..],
                        pitch,
                        Mat::rows(&wrt[ki * kc * cout..(ki + 1) * kc * cout], kc, cout),
                        Mat::rows(dyi, cout, ncols),
                        j > 0,
                        gemm_threads,
                    );
                }
                let dxi = &mut dx_chunk[(i - first) * in_img..(i - first + 1) * in_img];
                t.fold(dtaps, dxi);
            }
        }
        dwt
    };

    let (dx, dwt) = run_chunks(d.n, in_img, wlen, chunks, need_dx, need_dw, process);
    let Some(dwt) = dwt else {
        return (dx, None);
    };
    // Back from dW_ki^T (C*k x O per kernel row) to O x C x k x k.
    let mut dw = vec![0f32; wlen];
    for (co, wo) in dw.chunks_exact_mut(kc * k).enumerate() {
        for (r, taps) in wo.chunks_exact_mut(k).enumerate() {
            let (ci, ki) = (r / k, r % k);
            for (kj, v) in taps.iter_mut().enumerate() {
                *v = dwt[ki * kc * cout + (ci * k + kj) * cout + co];
            }
        }
    }
    (dx, Some(dw))
}
