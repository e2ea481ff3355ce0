//! `harness bench`: a tiny run prints one JSON object with positive figures; an unknown model is
//! a usage error.

use std::process::Command;

fn harness() -> Command {
    Command::new(env!("CARGO_BIN_EXE_harness"))
}

#[test]
fn bench_json_has_positive_figures() {
    let out = harness()
        .args([
            "bench",
            "--model",
            "vgg-small",
            "--train-batch",
            "8",
            "--infer-batch",
            "8",
            "--rounds",
            "1",
            "--json",
        ])
        .output()
        .expect("run harness");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("some output");
    let v: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(v["model"], "vgg-small");
    assert!(matches!(v["kernels"].as_str(), Some("fast" | "stock")));
    for key in [
        "train_images_per_second",
        "train_images_per_second_min",
        "train_images_per_second_max",
        "infer_images_per_second",
        "infer_images_per_second_min",
        "infer_images_per_second_max",
        "latency_ms_p50",
        "latency_ms_p99",
        "threads",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {last}"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x}");
    }
    assert!(v["latency_ms_p99"].as_f64() >= v["latency_ms_p50"].as_f64());
    let rss = v["peak_rss_bytes"].as_u64().expect("peak_rss_bytes");
    if cfg!(target_os = "linux") {
        assert!(rss > 0);
    }
    assert!(v["provenance"].is_object());
    let loss = v["train_loss_first"].as_f64().expect("train_loss_first");
    assert!(loss.is_finite() && loss > 0.0);
}

#[test]
fn bench_unknown_model_is_a_usage_error() {
    let out = harness()
        .args(["bench", "--model", "resnet21", "--rounds", "1"])
        .output()
        .expect("run harness");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_zero_rounds_is_a_usage_error() {
    let out = harness()
        .args(["bench", "--model", "vgg-small", "--rounds", "0"])
        .output()
        .expect("run harness");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_int8_measures_the_int8_deployment_beside_f32() {
    let out = harness()
        .args([
            "bench",
            "--model",
            "vgg-small",
            "--train-batch",
            "4",
            "--infer-batch",
            "4",
            "--rounds",
            "1",
            "--precision",
            "int8",
            "--json",
        ])
        .output()
        .expect("run harness");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("int8 infer img/s"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON");
    for key in [
        "int8_infer_images_per_second",
        "int8_latency_ms_p50",
        "int8_latency_ratio",
        "int8_latency_ratio_low",
        "int8_latency_ratio_high",
    ] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} missing"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x}");
    }
    assert!(v["int8_latency_ratio_low"].as_f64() <= v["int8_latency_ratio_high"].as_f64());
    // The deployment benchmarked is the one read back from its int8 file, about a quarter of
    // the f32 file.
    let ratio = v["int8_file_bytes"].as_f64().expect("int8_file_bytes")
        / v["f32_file_bytes"].as_f64().expect("f32_file_bytes");
    assert!(
        (0.2..0.35).contains(&ratio),
        "int8 / f32 file bytes {ratio}"
    );
    let kernel = v["int8_kernel"].as_str().expect("int8_kernel");
    assert!(
        ["portable", "avx2", "avxvnni", "avx512vnni"].contains(&kernel),
        "{kernel}"
    );
}
