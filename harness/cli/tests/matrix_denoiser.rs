//! `harness run --matrix` with a denoiser victim (DnCNN) on synthetic data: it trains with the
//! denoising objective, records PSNR (owner, per access level, noisy-input reference) where a
//! classifier records accuracy, and the planner refuses attacks on denoisers before training.

mod common;

use common::{harness, stderr, stdout};

/// DnCNN on 8x8 synthetic images, unprotected and under selective encryption (L1 and PSS).
const DENOISER: &str = r#"
name = "dn"
[axes]
datasets = ["synthetic:8"]
models = ["dncnn"]
defences = ["none", "se-l1", "se-pss"]
attacks = []
seeds = [0]
[victim]
epochs = 8
batch_size = 16
lr = 0.05
max_grad_norm = 1.0
noise_sigma_255 = 50
[data]
train_limit = 256
test_limit = 64
[defences.se-l1]
use = "selective-encryption"
ranking = "l1"
ratio = 0.6
levels = 3
[defences.se-pss]
use = "selective-encryption"
ranking = "pss"
ratio = 0.6
levels = 3
pss_images = 32
pss_batch_size = 16
"#;

#[test]
fn a_denoiser_matrix_records_psnr_per_level() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.toml"), DENOISER).unwrap();
    let out = harness(&["run", "--matrix", "m.toml", "--quiet"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let run = std::fs::read_dir(dir.path().join("results"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("dn-"))
        .unwrap();
    let jsonl = std::fs::read_to_string(run.join("records.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{jsonl}");
    let metric = |defence: &str, metric: &str| {
        rows.iter()
            .find(|r| r["defence"] == defence && r["attack"] == "-" && r["metric"] == metric)
            .and_then(|r| r["value"].as_f64())
    };
    assert!(
        rows.iter().all(|r| r["metric"] != "owner-accuracy"),
        "a denoiser has no accuracy"
    );
    let owner = metric("none", "owner-psnr").unwrap();
    let noisy = metric("none", "noisy-psnr").unwrap();
    // Sigma 50/255 unclipped: the noisy input sits near 14.15 dB; the trained DnCNN must do
    // clearly better than handing the noisy image back.
    assert!((noisy - 14.15).abs() < 0.5, "noisy {noisy}");
    assert!(owner > noisy + 0.5, "owner {owner} vs noisy {noisy}");
    for d in ["se-l1", "se-pss"] {
        // The full licence restores the victim exactly.
        assert!(
            (metric(d, "owner-psnr").unwrap() - owner).abs() < 1e-9,
            "{d}"
        );
        assert_eq!(
            metric(d, "noisy-psnr"),
            Some(noisy),
            "same noise for every model"
        );
        let levels: Vec<f64> = (0..3)
            .map(|m| metric(d, &format!("level-psnr:level-{m}")).unwrap())
            .collect();
        // No licence (level 0): 60% of every layer's kernels masked (with keys from the OS
        // random source, so the exact PSNR varies run to run): worse than with the key. The
        // tiny synthetic victim is close to the identity, so the margin is small for L1; PSS
        // picks the kernels that matter and costs clearly more.
        assert!(levels[0] < owner, "{d}: {levels:?} vs owner {owner}");
        if d == "se-pss" {
            assert!(levels[0] < owner - 0.5, "{d}: {levels:?} vs owner {owner}");
        }
        assert!(metric(d, "level-latency-ms-p50:level-0").unwrap() > 0.0);
        assert!(metric(d, "encrypted-conv-fraction").unwrap() > 0.55);
    }
    assert!(metric("se-pss", "pss-epochs").unwrap() >= 1.0);
    assert!(metric("none", "latency-ms-p50").unwrap() > 0.0);
    assert!(metric("none", "model-bytes").unwrap() > 1e6);
    let table = stdout(&out);
    assert!(table.contains("owner PSNR"), "{table}");
    assert!(table.contains("level-0 "), "{table}");
    let summary = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(summary.contains(" dB"), "{summary}");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.contains("Denoiser PSNR per access level"));
}

#[test]
fn attacks_on_a_denoiser_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            DENOISER.replace("attacks = []", "attacks = [\"fine-tune\"]"),
            vec!["attack `fine-tune` cannot run on `dncnn`", "denoiser"],
        ),
        (
            DENOISER.replace("attacks = []", "attacks = [\"scratch\"]"),
            vec!["attack `scratch` cannot run on `dncnn`"],
        ),
        (
            DENOISER.replace("\"none\", \"se-l1\"", "\"none+top1-label\", \"se-l1\""),
            vec!["`none+top1-label` perturbs class probabilities"],
        ),
        (
            DENOISER.replace("noise_sigma_255 = 50", "noise_sigma_255 = 0"),
            vec!["noise_sigma_255"],
        ),
        // A classifier still needs attacks.
        (
            DENOISER.replace("[\"dncnn\"]", "[\"dncnn\", \"resnet20\"]"),
            vec!["axes.attacks is empty"],
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        let out = harness(&["run", "--matrix", "bad.toml"], dir.path());
        assert_eq!(out.status.code(), Some(2), "case {i}: {}", stderr(&out));
        for e in expected {
            assert!(stderr(&out).contains(e), "case {i}: {}", stderr(&out));
        }
        assert!(
            !dir.path().join("results").exists(),
            "case {i}: nothing ran"
        );
    }
}
