//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Result, Tensor};

/// `harness/core/tests/fixtures/<name>`.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// Every tensor of a fixture file, on the CPU.
pub fn load_fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_path(name), &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read fixture {name}: {e}"))
}

/// One tensor of a fixture.
pub fn get<'a>(map: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    map.get(name)
        .unwrap_or_else(|| panic!("fixture has no tensor `{name}`"))
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

/// Asserts `max |actual - expected| <= tol * max(1, max |expected|)` and the same shape; prints
/// and returns the difference.
pub fn assert_close(actual: &Tensor, expected: &Tensor, tol: f32, what: &str) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let diff = max_abs_diff(actual, expected).expect("diff");
    let scale = expected
        .to_dtype(DType::F32)
        .and_then(|t| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("scale")
        .max(1.0);
    println!("{what}: max abs diff {diff:.3e} (scale {scale:.3})");
    assert!(
        diff <= tol * scale,
        "{what}: max abs diff {diff} > {tol} * {scale}"
    );
    diff
}

/// A deterministic pseudo-random f32 tensor in about [-amp, amp] (no dependence on candle's RNG).
pub fn input(dims: &[usize], salt: u64, amp: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ salt.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            ((2.0 * u - 1.0) * amp) as f32
        })
        .collect();
    Tensor::from_vec(values, dims, &Device::Cpu).expect("input tensor")
}
