//! Guards on inputs and outputs, through the binary: existing outputs are never replaced without
//! `--force` (checked before any work), unwritable outputs fail at once, and broken inputs
//! (non-finite or impossible weights, out-of-range levels, passphrases that do not apply) are
//! refused with a message that names what is wrong.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use harness_core::{Arch, ModelSpec, ParamStore};

/// Runs `harness` in `dir` with a whitespace-separated argument line and extra environment.
fn harness_env(args: &str, dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.args(args.split_whitespace())
        .current_dir(dir)
        .env("HARNESS_CACHE", dir.join("cache"))
        .env_remove("HARNESS_DATA");
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

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

/// Exit code 2 and a message naming `path` and the way out (`--force`).
fn refused(out: &Output, path: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    let t = text(out);
    assert!(
        t.contains(path) && t.contains("already exists") && t.contains("--force"),
        "{t}"
    );
}

/// An untrained ResNet-20 (10 classes) saved in `dir`, after `edit` changed its weights.
fn resnet20(dir: &Path, name: &str, edit: impl FnOnce(&ParamStore)) -> PathBuf {
    let params = ParamStore::new(0, &Device::Cpu);
    harness_core::zoo::build(&ModelSpec::new(Arch::Resnet20, 10), &params).unwrap();
    edit(&params);
    let path = dir.join(name);
    params.save(&path).unwrap();
    path
}

/// Sets element `i` of tensor `name` to `value`.
fn poke(params: &ParamStore, name: &str, i: usize, value: f32) {
    let var = params.get(name).unwrap();
    let mut v = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    v[i] = value;
    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
        .unwrap();
}

const TRAIN: &str = "train --dataset synthetic:8 --model resnet20 --epochs 1 --batch-size 32 \
                     --train-limit 64 --test-limit 32 --quiet";

#[test]
fn train_refuses_to_overwrite_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&harness(&format!("{TRAIN} --out m.safetensors"), d));
    let before = std::fs::read(d.join("m.safetensors")).unwrap();
    let card = std::fs::read(d.join("m.json")).unwrap();

    // Refused before the data is even looked for: an empty data folder would otherwise fail
    // with "not found" (exit 1).
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = harness(
        &format!(
            "train --dataset cifar10 --data-dir {} --model resnet20 --out m.safetensors",
            empty.display()
        ),
        d,
    );
    refused(&out, "m.safetensors");
    assert_eq!(std::fs::read(d.join("m.safetensors")).unwrap(), before);

    // The run card beside the weights is protected too.
    std::fs::write(d.join("n.json"), b"{\"mine\": true}").unwrap();
    let out = harness(&format!("{TRAIN} --out n.safetensors"), d);
    refused(&out, "n.json");
    assert!(!d.join("n.safetensors").exists());
    assert_eq!(
        std::fs::read(d.join("n.json")).unwrap(),
        b"{\"mine\": true}"
    );

    // --force overwrites both (another seed: other weights).
    ok(&harness(
        &format!("{TRAIN} --seed 1 --out m.safetensors --force"),
        d,
    ));
    assert_ne!(std::fs::read(d.join("m.safetensors")).unwrap(), before);
    assert_ne!(std::fs::read(d.join("m.json")).unwrap(), card);

    // Weights named .json would be overwritten by their own run card.
    let out = harness(&format!("{TRAIN} --out w.json"), d);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!d.join("w.json").exists());
}

#[test]
fn train_checks_that_its_output_is_writable_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A file where the output's folder should be: no folder can be made there. (Permissions
    // would not do: tests may run as root.)
    std::fs::write(d.join("file"), b"x").unwrap();
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = harness(
        &format!(
            "train --dataset cifar10 --data-dir {} --model resnet20 --out file/m.safetensors",
            empty.display()
        ),
        d,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("file/m.safetensors") && t.contains("cannot write there"),
        "{t}"
    );
    assert!(
        !t.contains("not found under"),
        "checked after the data: {t}"
    );

    // A missing folder is created, and the check leaves nothing behind in it.
    ok(&harness(&format!("{TRAIN} --out new/sub/m.safetensors"), d));
    let mut names: Vec<String> = std::fs::read_dir(d.join("new/sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["m.json", "m.safetensors"]);
}

#[test]
fn protect_refuses_to_overwrite_keys_models_and_licences() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = resnet20(d, "m.st", |_| {});
    let encrypt = |extra: &str| {
        harness(
            &format!(
                "protect encrypt --model {} --arch resnet20 --ranking l1 --ratio 0.2 --levels 2 \
                 --out enc.st --keys owner.key --quiet {extra}",
                m.display()
            ),
            d,
        )
    };
    ok(&encrypt(""));
    let key = std::fs::read(d.join("owner.key")).unwrap();
    let enc = std::fs::read(d.join("enc.st")).unwrap();

    // The key file: refused, and said why it matters; nothing is written.
    std::fs::remove_file(d.join("enc.st")).unwrap();
    let out = encrypt("");
    refused(&out, "owner.key");
    assert!(text(&out).contains("undecryptable"), "{}", text(&out));
    assert_eq!(std::fs::read(d.join("owner.key")).unwrap(), key);
    assert!(!d.join("enc.st").exists());
    std::fs::write(d.join("enc.st"), &enc).unwrap();

    // The encrypted model alone.
    std::fs::rename(d.join("owner.key"), d.join("kept.key")).unwrap();
    refused(&encrypt(""), "enc.st");
    assert!(!d.join("owner.key").exists());
    assert_eq!(std::fs::read(d.join("enc.st")).unwrap(), enc);
    std::fs::rename(d.join("kept.key"), d.join("owner.key")).unwrap();

    // Checked before the model is read: a missing model is not what stops it.
    let out = harness(
        "protect encrypt --model missing.st --arch resnet20 --ranking l1 --out enc.st --keys owner.key",
        d,
    );
    refused(&out, "owner.key");

    // --force replaces both with a new key and model.
    ok(&encrypt("--force"));
    assert_ne!(std::fs::read(d.join("owner.key")).unwrap(), key);
    assert_ne!(std::fs::read(d.join("enc.st")).unwrap(), enc);

    // Licences and decrypted models.
    ok(&harness(
        "protect licence --keys owner.key --level 2 --out l.lic",
        d,
    ));
    let lic = std::fs::read(d.join("l.lic")).unwrap();
    refused(
        &harness("protect licence --keys owner.key --level 1 --out l.lic", d),
        "l.lic",
    );
    assert_eq!(std::fs::read(d.join("l.lic")).unwrap(), lic);
    ok(&harness(
        "protect licence --keys owner.key --level 1 --out l.lic --force",
        d,
    ));
    assert_ne!(std::fs::read(d.join("l.lic")).unwrap(), lic);
    // The licence may never replace the key file, even with --force.
    let out = harness(
        "protect licence --keys owner.key --level 1 --out owner.key --force",
        d,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    std::fs::write(d.join("dec.st"), b"precious").unwrap();
    refused(
        &harness(
            "protect decrypt --model enc.st --licence l.lic --out dec.st",
            d,
        ),
        "dec.st",
    );
    assert_eq!(std::fs::read(d.join("dec.st")).unwrap(), b"precious");
    ok(&harness(
        "protect decrypt --model enc.st --licence l.lic --out dec.st --force",
        d,
    ));
    assert_ne!(std::fs::read(d.join("dec.st")).unwrap(), b"precious");
}

#[test]
fn broken_weights_are_refused_naming_the_tensor_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nan = resnet20(d, "nan.st", |p| {
        poke(p, "layer2.0.conv1.weight", 5, f32::NAN)
    });
    let inf = resnet20(d, "inf.st", |p| poke(p, "fc.weight", 0, f32::INFINITY));
    let var = resnet20(d, "var.st", |p| poke(p, "bn1.running_var", 2, -0.5));
    for (file, tensor) in [
        (&nan, "`layer2.0.conv1.weight`"),
        (&inf, "`fc.weight`"),
        (&var, "`bn1.running_var`"),
    ] {
        let out = harness(
            &format!(
                "eval --dataset synthetic:8 --model resnet20 --weights {} --quiet",
                file.display()
            ),
            d,
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let t = text(&out);
        assert!(
            t.contains(tensor) && t.contains(&*file.to_string_lossy()),
            "{t}"
        );
        assert!(!t.contains("test accuracy"), "{t}");

        let out = harness(
            &format!(
                "protect encrypt --model {} --arch resnet20 --ranking l1 --out e.st --keys e.key",
                file.display()
            ),
            d,
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let t = text(&out);
        assert!(
            t.contains(tensor) && t.contains(&*file.to_string_lossy()),
            "{t}"
        );
        assert!(!d.join("e.st").exists() && !d.join("e.key").exists());
    }
    assert!(
        text(&harness(
            &format!(
                "eval --dataset synthetic:8 --model resnet20 --weights {} --quiet",
                var.display()
            ),
            d
        ))
        .contains("running variance cannot be negative")
    );
}

#[test]
fn diverged_training_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = harness(&format!("{TRAIN} --lr 1e30 --out m.safetensors"), d);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("diverged at epoch 1"), "{}", text(&out));
    assert!(!d.join("m.safetensors").exists() && !d.join("m.json").exists());
}

#[test]
fn a_passphrase_must_match_how_the_key_file_was_sealed() {
    const VAR: &str = "PROTBENCH_GUARDS_PASSPHRASE";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = resnet20(d, "m.st", |_| {});
    let env = [(VAR, "s3cret-enough")];
    let encrypt = |keys: &str, out: &str, extra: &str| {
        harness_env(
            &format!(
                "protect encrypt --model {} --arch resnet20 --ranking l1 --ratio 0.2 --levels 2 \
                 --out {out} --keys {keys} --quiet {extra}",
                m.display()
            ),
            d,
            &env,
        )
    };
    ok(&encrypt("plain.key", "plain.st", ""));
    ok(&encrypt(
        "pass.key",
        "pass.st",
        &format!("--passphrase-env {VAR}"),
    ));

    // Given for a key file sealed without one: refused, not silently ignored.
    let out = harness_env(
        &format!("protect licence --keys plain.key --level 1 --out a.lic --passphrase-env {VAR}"),
        d,
        &env,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("has no passphrase"), "{}", text(&out));
    assert!(!d.join("a.lic").exists());

    // Missing for a protected one: the message says how to give it.
    let out = harness_env(
        "protect licence --keys pass.key --level 1 --out b.lic",
        d,
        &env,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("protected by a passphrase") && t.contains("--passphrase-env"),
        "{t}"
    );
    assert!(!d.join("b.lic").exists());

    // Each opens as it was sealed.
    ok(&harness_env(
        "protect licence --keys plain.key --level 1 --out a.lic",
        d,
        &env,
    ));
    ok(&harness_env(
        &format!("protect licence --keys pass.key --level 1 --out b.lic --passphrase-env {VAR}"),
        d,
        &env,
    ));
}

#[test]
fn a_level_the_key_file_lacks_is_named_with_the_levels_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = resnet20(d, "m.st", |_| {});
    ok(&harness(
        &format!(
            "protect encrypt --model {} --arch resnet20 --ranking l1 --ratio 0.2 --levels 3 \
             --out enc.st --keys owner.key --quiet",
            m.display()
        ),
        d,
    ));
    let out = harness("protect licence --keys owner.key --level 9 --out l.lic", d);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("--level 9")
            && t.contains("does not exist")
            && t.contains("levels 0 (nothing) to 3"),
        "{t}"
    );
    assert!(!t.contains("failed to open the key file"), "{t}");
    assert!(!d.join("l.lic").exists());
    ok(&harness(
        "protect licence --keys owner.key --level 3 --out l.lic",
        d,
    ));
}

#[test]
fn a_broken_encrypted_model_is_named_by_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = resnet20(d, "m.st", |_| {});
    ok(&harness(
        &format!(
            "protect encrypt --model {} --arch resnet20 --ranking l1 --levels 2 --out enc.st \
             --keys owner.key --quiet",
            m.display()
        ),
        d,
    ));
    ok(&harness(
        "protect licence --keys owner.key --level 2 --out l.lic",
        d,
    ));
    std::fs::write(d.join("junk.st"), b"not a model at all").unwrap();
    let out = harness(
        "protect decrypt --model junk.st --licence l.lic --out x.st",
        d,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("junk.st: not a valid safetensors file"), "{t}");
    assert!(!t.contains("<model file>"), "{t}");
    assert!(!d.join("x.st").exists());
}
