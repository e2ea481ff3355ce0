//! The quantization parameters of a range, chosen as PyTorch's fused QAT op chooses them
//! (`fused_moving_avg_obs_fake_quant`, which calls ATen's `ChooseQuantizationParams`; not the
//! Python observers' `calculate_qparams`, which differ for symmetric weights: the fused op gives
//! `max(|min| / 128, max / 127)`, the observer `max|x| / 127.5`).
//!
//! Steps: a symmetric scheme first widens the range to the symmetric grid; the range is
//! extended to contain 0; scale = (max - min) / (qmax - qmin) in f64, 0.1 when it is 0 in f32,
//! and at least 6.1e-5 (the range scaled up with it); the zero point comes from whichever end
//! loses less precision, nudged to an integer (round half to even) within the range; a
//! symmetric scheme's zero point is the middle of the range.

/// An inclusive integer range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QRange {
    /// Smallest integer.
    pub min: i32,
    /// Largest integer.
    pub max: i32,
}

/// Scale and zero point of one tensor or channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    /// Step of the grid.
    pub scale: f32,
    /// The integer that represents 0.
    pub zero_point: i32,
}

/// The smallest scale ATen keeps (`SMALL_SCALE_THRESHOLD`).
const SMALL_SCALE: f32 = 6.1e-5;

/// The parameters for values in `[min, max]` on `range` (see the module docs).
pub fn choose(min: f32, max: f32, range: QRange, symmetric: bool) -> QParams {
    let (qmin, qmax) = (f64::from(range.min), f64::from(range.max));
    let (mut lo, mut hi) = (f64::from(min), f64::from(max));
    let straddles = lo < 0.0 && hi > 0.0;
    if straddles && symmetric {
        let sym_min = -f64::from((range.max - range.min) / 2 + 1);
        let sym_max = f64::from((range.max - range.min) / 2);
        let step = (lo / sym_min).abs().max((hi / sym_max).abs());
        lo = step * sym_min;
        hi = step * sym_max;
    }
    lo = lo.min(0.0);
    hi = hi.max(0.0);
    let mut scale = (hi - lo) / (qmax - qmin);
    if scale as f32 == 0.0 || (1.0 / (scale as f32)).is_infinite() {
        scale = 0.1;
    }
    if scale < f64::from(SMALL_SCALE) {
        let original = scale;
        scale = f64::from(SMALL_SCALE);
        if lo == 0.0 {
            hi = scale * (qmax - qmin);
        } else if hi == 0.0 {
            lo = -scale * (qmax - qmin);
        } else {
            let amplifier = scale / original;
            lo *= amplifier;
            hi *= amplifier;
        }
    }
    let s = f64::from(scale as f32);
    let from_min = qmin - lo / s;
    let from_max = qmax - hi / s;
    let error_min = qmin.abs() - (lo / s).abs();
    let error_max = qmax.abs() - (hi / s).abs();
    let mut zero = if error_min < error_max {
        from_min
    } else {
        from_max
    };
    if straddles && symmetric {
        zero = (qmin + qmax) / 2.0;
    }
    let zero_point = if zero < qmin {
        range.min
    } else if zero > qmax {
        range.max
    } else {
        zero.round_ties_even() as i32
    };
    QParams {
        scale: scale as f32,
        zero_point,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACT: QRange = QRange { min: 0, max: 127 };
    const WT: QRange = QRange {
        min: -128,
        max: 127,
    };

    #[test]
    fn a_range_that_straddles_zero_gets_a_zero_point_inside_it() {
        let p = choose(-1.0, 3.0, ACT, false);
        assert_eq!(p.scale, (4.0f64 / 127.0) as f32);
        assert_eq!(p.zero_point, 32); // 127 / 4 = 31.75
        // Symmetric: the step covers the larger side (128 below, 127 above) and zero is 0.
        let w = choose(-1.0, 0.5, WT, true);
        assert_eq!(w.scale, (1.0f64 / 128.0) as f32);
        assert_eq!(w.zero_point, 0);
    }

    #[test]
    fn degenerate_ranges_get_pytorchs_fallbacks() {
        assert_eq!(choose(0.0, 0.0, ACT, false).scale, 0.1);
        let tiny = choose(0.0, 1e-6, ACT, false);
        assert_eq!(tiny.scale, SMALL_SCALE);
        assert_eq!(tiny.zero_point, 0);
        // Only positive values: zero maps to the bottom of the range.
        assert_eq!(choose(2.0, 3.0, ACT, false).zero_point, 0);
        // Only negative values: to the top.
        assert_eq!(choose(-3.0, -2.0, ACT, false).zero_point, 127);
    }
}
