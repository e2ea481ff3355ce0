//! Fake quantization against PyTorch's x86 QAT modules, bit for bit. The fixtures were written by
//! `ci/torch/make_quant_fixtures.py` (torch 2.15): sequences of inputs through
//! `FusedMovingAvgObsFakeQuantize` for activations (per tensor, 0..127) and weights (per
//! channel, symmetric, -128..127), with the outputs, the straight-through gradients, the running
//! ranges and the parameters after each step; and 500+ (min, max) pairs with the parameters the
//! fused op chose for them.

mod common;

use candle_core::{DType, Tensor, Var};
use common::{get, load_fixture};
use harness_core::quant::{FakeQuantizer, Scheme, choose};

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap_or_else(|e| panic!("not an f32 tensor: {e}"))
}

fn i64s(t: &Tensor) -> Vec<i64> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<i64>())
        .unwrap_or_else(|e| panic!("not an i64 tensor: {e}"))
}

/// Bit-identical, or the first index and values that differ.
fn assert_bits(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let diff = ours
        .iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
        .map(|(i, (a, b))| (i, *a, *b))
        .collect::<Vec<_>>();
    assert!(
        diff.is_empty(),
        "{what}: {} of {} values differ, first {:?}",
        diff.len(),
        ours.len(),
        diff.first()
    );
}

#[test]
fn qparams_are_the_fused_ops_choice_for_every_range() {
    let f = load_fixture("qparams.safetensors");
    for (name, scheme) in [
        ("affine", Scheme::Activation),
        ("symmetric", Scheme::Weight),
    ] {
        let mins = f32s(get(&f, &format!("{name}.min")));
        let maxs = f32s(get(&f, &format!("{name}.max")));
        let scales = f32s(get(&f, &format!("{name}.scale")));
        let zps = i64s(get(&f, &format!("{name}.zp")));
        let mut wrong = Vec::new();
        for i in 0..mins.len() {
            let p = choose(mins[i], maxs[i], scheme.range(), scheme.symmetric());
            if p.scale.to_bits() != scales[i].to_bits() || i64::from(p.zero_point) != zps[i] {
                wrong.push((mins[i], maxs[i], p, scales[i], zps[i]));
            }
        }
        assert!(
            wrong.is_empty(),
            "{name}: {} of {} ranges get other parameters than PyTorch, first {:?}",
            wrong.len(),
            mins.len(),
            wrong.first()
        );
    }
}

#[test]
fn fake_quantizers_follow_pytorchs_modules_step_by_step() {
    let f = load_fixture("quant.safetensors");
    let cases = [
        ("act0", Scheme::Activation),
        ("act1", Scheme::Activation),
        ("act2", Scheme::Activation),
        ("wt0", Scheme::Weight),
        ("wt1", Scheme::Weight),
        ("wt2", Scheme::Weight),
    ];
    for (case, scheme) in cases {
        let steps = i64s(get(&f, &format!("{case}.steps")))[0] as usize;
        let fq = FakeQuantizer::new(scheme);
        for s in 0..steps {
            let at = |what: &str| get(&f, &format!("{case}.{what}{s}")).clone();
            if s == steps - 1 {
                // The last step runs with the observer frozen.
                fq.set_observing(false);
            }
            let x = Var::from_tensor(&at("x")).unwrap();
            let y = fq.forward(x.as_tensor()).unwrap();
            let what = format!("{case} step {s}");
            assert_bits(&format!("{what} output"), &f32s(&y), &f32s(&at("y")));
            let loss = (y * at("g")).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let dx = grads.get(x.as_tensor()).expect("a gradient for the input");
            assert_bits(&format!("{what} gradient"), &f32s(dx), &f32s(&at("grad")));
            let range = fq.range();
            assert_bits(
                &format!("{what} running min"),
                &range.min,
                &f32s(&at("min")),
            );
            assert_bits(
                &format!("{what} running max"),
                &range.max,
                &f32s(&at("max")),
            );
            let params = fq.params();
            let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
            let zps: Vec<i64> = params.iter().map(|p| i64::from(p.zero_point)).collect();
            assert_bits(&format!("{what} scales"), &scales, &f32s(&at("scale")));
            assert_eq!(zps, i64s(&at("zp")), "{what} zero points");
        }
    }
}

#[test]
fn quantization_off_passes_values_through_and_a_clamped_value_gets_no_gradient() {
    let fq = FakeQuantizer::new(Scheme::Activation);
    let x = Tensor::new(&[0.0f32, 0.5, 1.0, 2.0], &candle_core::Device::Cpu).unwrap();
    let y = fq.forward(&x).unwrap();
    // Range [0, 2] on 0..127: every value is on or near the grid, none clamped.
    assert!(
        f32s(&y)
            .iter()
            .zip(f32s(&x))
            .all(|(a, b)| (a - b).abs() < 2.0 / 127.0)
    );
    fq.set_observing(false);
    // 3.0 lies beyond the frozen range: clamped to the top, gradient zero there.
    let v =
        Var::from_tensor(&Tensor::new(&[1.0f32, 3.0], &candle_core::Device::Cpu).unwrap()).unwrap();
    let y = fq.forward(v.as_tensor()).unwrap();
    assert!((f32s(&y)[1] - 2.0).abs() < 1e-6, "{:?}", f32s(&y));
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(f32s(g.get(v.as_tensor()).unwrap()), vec![1.0, 0.0]);
    fq.set_quantizing(false);
    let same = fq.forward(&x).unwrap();
    assert_eq!(f32s(&same), f32s(&x));
    assert_eq!(same.dtype(), DType::F32);
}
