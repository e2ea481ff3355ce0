//! End-to-end tests of `harness protect encrypt | licence | decrypt` through the binary, on a
//! ResNet-20 trained for one epoch on 8x8 synthetic images.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PASS_VAR: &str = "PROTBENCH_TEST_PASSPHRASE";
const PASS: &str = "tr0ub4dor-and-3";

/// Runs `harness` with a whitespace-separated argument line and extra environment.
fn harness_env(args: &str, dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.args(args.split_whitespace())
        .current_dir(dir)
        .env("HARNESS_CACHE", dir.join("cache"))
        .env_remove("HARNESS_DATA")
        .env_remove(PASS_VAR);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the harness binary runs")
}

fn harness(args: &str, dir: &Path) -> Output {
    harness_env(args, dir, &[])
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("some stdout");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

/// A trained model in a fresh folder.
fn trained(seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let m = dir.path().join("m.safetensors");
    let out = harness(
        &format!(
            "train --dataset synthetic:8 --model resnet20 --epochs 1 --batch-size 32 --lr 0.05 --quiet --seed {seed} --out {}",
            m.display()
        ),
        dir.path(),
    );
    ok(&out);
    (dir, m)
}

fn encrypt_args(m: &Path, out: &str, keys: &str, extra: &str) -> String {
    format!(
        "protect encrypt --model {} --arch resnet20 --ranking l1 --ratio 0.2 --levels 3 --out {out} --keys {keys} --json --quiet {extra}",
        m.display()
    )
}

#[test]
fn encrypt_licence_decrypt_round_trip() {
    let (dir, m) = trained(1);
    let d = dir.path();
    let out = harness(&encrypt_args(&m, "enc.st", "owner.key", ""), d);
    ok(&out);
    let j = last_json(&out);
    assert_eq!(j["levels"], 3);
    assert_eq!(j["ranking"], "l1");
    assert_eq!(j["pss_epochs"], 0);
    let frac = j["encrypted_conv_fraction"].as_f64().unwrap();
    assert!((0.2..0.25).contains(&frac), "{frac}");
    assert!(j["encrypted_fraction"].as_f64().unwrap() < frac);
    assert_eq!(j["layers"].as_array().unwrap().len(), 21);

    // The encrypted model loads and runs as an ordinary file.
    let out = harness(
        "eval --dataset synthetic:8 --model resnet20 --weights enc.st --json",
        d,
    );
    ok(&out);

    let original = std::fs::read(&m).unwrap();
    let enc = std::fs::read(d.join("enc.st")).unwrap();
    assert_ne!(original, enc);
    for level in 0..=3 {
        let out = harness(
            &format!("protect licence --keys owner.key --level {level} --out l{level}.lic --json"),
            d,
        );
        ok(&out);
        assert_eq!(last_json(&out)["level"], level);
        let out = harness(
            &format!(
                "protect decrypt --model enc.st --licence l{level}.lic --out dec{level}.st --json"
            ),
            d,
        );
        ok(&out);
        let j = last_json(&out);
        assert_eq!(j["level"], level);
        let dec = std::fs::read(d.join(format!("dec{level}.st"))).unwrap();
        assert_eq!(dec == original, level == 3, "level {level}");
    }
    // The full licence restores the original file byte for byte.
    assert_eq!(std::fs::read(d.join("dec3.st")).unwrap(), original);
    // Licences grow with the level (one key per tier) and stay small.
    let size = |n: &str| std::fs::metadata(d.join(n)).unwrap().len();
    assert!(size("l1.lic") < size("l3.lic") && size("l3.lic") < 300);
}

#[test]
fn wrong_foreign_and_tampered_licences_write_nothing() {
    let (dir, m) = trained(2);
    let d = dir.path();
    ok(&harness(&encrypt_args(&m, "a.st", "a.key", ""), d));
    ok(&harness(&encrypt_args(&m, "b.st", "b.key", ""), d));
    ok(&harness(
        "protect licence --keys b.key --level 3 --out b.lic",
        d,
    ));
    ok(&harness(
        "protect licence --keys a.key --level 3 --out a.lic",
        d,
    ));

    // A licence for another model.
    let out = harness("protect decrypt --model a.st --licence b.lic --out x.st", d);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("different model"), "{}", text(&out));
    assert!(!d.join("x.st").exists());

    // A tampered licence.
    let mut lic = std::fs::read(d.join("a.lic")).unwrap();
    let n = lic.len();
    lic[n - 5] ^= 0x20;
    std::fs::write(d.join("t.lic"), &lic).unwrap();
    let out = harness("protect decrypt --model a.st --licence t.lic --out x.st", d);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("modified or corrupted"),
        "{}",
        text(&out)
    );
    assert!(!d.join("x.st").exists());

    // The key file given as a licence.
    let out = harness("protect decrypt --model a.st --licence a.key --out x.st", d);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("licence file is needed"),
        "{}",
        text(&out)
    );
    assert!(!d.join("x.st").exists());

    // A plain model is not encrypted.
    let out = harness(
        &format!(
            "protect decrypt --model {} --licence a.lic --out x.st",
            m.display()
        ),
        d,
    );
    assert!(!out.status.success());
    assert!(!d.join("x.st").exists());

    // A level beyond the model's is a usage error, and no licence appears.
    let out = harness("protect licence --keys a.key --level 4 --out x.lic", d);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!d.join("x.lic").exists());
}

#[test]
fn passphrases_protect_the_key_file_and_never_show() {
    let (dir, m) = trained(3);
    let d = dir.path();
    let env = [(PASS_VAR, PASS)];
    let out = harness_env(
        &encrypt_args(&m, "e.st", "e.key", &format!("--passphrase-env {PASS_VAR}")),
        d,
        &env,
    );
    ok(&out);
    assert!(last_json(&out)["passphrase"].as_bool().unwrap());
    let key = std::fs::read(d.join("e.key")).unwrap();
    assert!(!key.windows(PASS.len()).any(|w| w == PASS.as_bytes()));

    let out = harness("protect licence --keys e.key --level 2 --out e.lic", d);
    assert!(!out.status.success());
    assert!(text(&out).contains("passphrase"), "{}", text(&out));
    let out = harness_env(
        &format!("protect licence --keys e.key --level 2 --out e.lic --passphrase-env {PASS_VAR}"),
        d,
        &[(PASS_VAR, "not it")],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("wrong passphrase"), "{}", text(&out));
    assert!(!text(&out).contains("not it"));
    assert!(!d.join("e.lic").exists());
    let out = harness_env(
        &format!("protect licence --keys e.key --level 2 --out e.lic --passphrase-env {PASS_VAR}"),
        d,
        &env,
    );
    ok(&out);
    assert!(!text(&out).contains(PASS));
    let out = harness(
        "protect licence --keys e.key --level 2 --out e.lic --passphrase-env UNSET_VAR_X",
        d,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn pss_needs_data_and_runs_with_it() {
    let (dir, m) = trained(4);
    let d = dir.path();
    let base = format!(
        "protect encrypt --model {} --arch resnet20 --ratio 0.1 --levels 2 --out p.st --keys p.key",
        m.display()
    );
    let out = harness(&base, d);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--dataset"), "{}", text(&out));
    assert!(!d.join("p.st").exists() && !d.join("p.key").exists());
    let out = harness(
        &format!(
            "{base} --ranking pss --dataset synthetic:8 --pss-images 64 --layers layer3.2.conv2,conv1 --json --quiet"
        ),
        d,
    );
    ok(&out);
    let j = last_json(&out);
    assert_eq!(j["ranking"], "pss");
    assert_eq!(j["pss_epochs"], 1);
    assert_eq!(j["layers"].as_array().unwrap().len(), 2);
    // The wrong architecture for the file is refused before anything is written.
    let out = harness(
        &format!(
            "protect encrypt --model {} --arch vgg-small --ranking l1 --out q.st --keys q.key",
            m.display()
        ),
        d,
    );
    assert!(!out.status.success());
    assert!(!d.join("q.st").exists() && !d.join("q.key").exists());
}

/// DnCNN: PSS learns its gates with the denoising loss (`--noise-sigma`), and the flag is refused
/// for a classifier.
#[test]
fn pss_ranks_a_denoiser_with_the_denoising_loss() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let params = harness_core::ParamStore::new(0, &candle_core::Device::Cpu);
    let spec = harness_core::ModelSpec::new(harness_core::Arch::Dncnn, 0);
    harness_core::zoo::build(&spec, &params).unwrap();
    let m = d.join("dncnn.st");
    params.save(&m).unwrap();
    let out = harness(
        &format!(
            "protect encrypt --model {} --arch dncnn --ranking pss --dataset synthetic:8 --pss-images 16 \
             --noise-sigma 25 --layers dncnn.0,dncnn.47 --ratio 0.1 --levels 2 --out e.st --keys e.key --json --quiet",
            m.display()
        ),
        d,
    );
    ok(&out);
    assert_eq!(last_json(&out)["ranking"], "pss");
    assert!(d.join("e.st").exists());
    let (_, r) = trained(5);
    let out = harness(
        &format!(
            "protect encrypt --model {} --arch resnet20 --ranking l1 --noise-sigma 25 --out f.st --keys f.key",
            r.display()
        ),
        d,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--noise-sigma"), "{}", text(&out));
    assert!(!d.join("f.st").exists());
}
