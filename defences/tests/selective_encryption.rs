//! Selective encryption on a small trained victim: ResNet-20 trained for a few epochs on 8x8
//! synthetic images. Round trip, refusals, per-level accuracy, mask statistics, selection counts,
//! PSS, and the defence as the matrix runs it.
#![expect(
    clippy::unwrap_used,
    reason = "test fixtures and helpers unwrap: a failure there is a failed test"
)]

use std::path::Path;
use std::sync::OnceLock;

use candle_core::Device;
use datasets::ImageSet;
use defences::selective_encryption::dprm::layer_stats;
use defences::selective_encryption::levels::set_sizes;
use defences::selective_encryption::ranking::selection_count;
use defences::selective_encryption::{
    Importance, Plan, PssConfig, Ranking, decrypt, encrypt, encrypt_with_master, importance,
    licence, model_fingerprint, public_header,
};
use harness_core::eval::evaluate;
use harness_core::protect::{DefenceContext, PlainModel, Victim};
use harness_core::sealed::SealError;
use harness_core::{Arch, Error, ModelSpec, ParamStore};

use harness_core::testkit::{self, NORM, recipe};
const MASTER: [u8; 32] = [0x5e; 32];

struct Fixture {
    victim: PlainModel,
    train: ImageSet,
    test: ImageSet,
    bytes: Vec<u8>,
    accuracy: f64,
}

/// The victim (trained on every training image: this protection has no attacker half), trained
/// once per test binary.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let data = testkit::synthetic_data().unwrap();
        let victim = testkit::train_victim(&data.train).unwrap().model;
        let accuracy = accuracy_of(&victim, &data.test);
        assert!(accuracy > 0.8, "the victim trained ({accuracy})");
        let bytes = victim.params.to_safetensors_bytes().unwrap();
        Fixture {
            victim,
            train: data.train,
            test: data.test,
            bytes,
            accuracy,
        }
    })
}

fn accuracy_of(model: &PlainModel, test: &ImageSet) -> f64 {
    evaluate(model.model.as_ref(), test, Some(&NORM), 256, &Device::Cpu)
        .unwrap()
        .top1
}

/// A model built from a file's bytes.
fn model_from(bytes: &[u8]) -> PlainModel {
    let store = ParamStore::new(0, &Device::Cpu);
    let m = PlainModel::build(ModelSpec::new(Arch::Resnet20, 10), store.clone()).unwrap();
    store.load_from_bytes(bytes, Path::new("mem")).unwrap();
    m
}

fn cheap(bytes: &[u8], ranking: Ranking, layers: &[String]) -> Importance {
    importance(
        bytes,
        ranking,
        layers,
        None,
        None,
        &PssConfig::default(),
        0,
        false,
        &Device::Cpu,
        false,
    )
    .unwrap()
}

fn plan(ratio: f64, levels: usize, ranking: Ranking) -> Plan {
    Plan {
        ratio,
        levels,
        layers: Vec::new(),
        ranking,
    }
}

/// The f32 values of `name` in a safetensors file.
fn values(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let v = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (view.shape().to_vec(), v)
}

#[test]
fn full_licence_restores_the_original_bytes_and_partial_ones_do_not() {
    let f = fixture();
    let imp = cheap(&f.bytes, Ranking::L1, &[]);
    let enc = encrypt(&f.bytes, &imp, &plan(0.2, 5, Ranking::L1), None).unwrap();
    assert_ne!(enc.model, f.bytes);
    // Anyone can load and run the encrypted file.
    let stolen = model_from(&enc.model);
    let acc = accuracy_of(&stolen, &f.test);
    assert!(
        (0.0..=1.0).contains(&acc),
        "the encrypted model runs: {acc}"
    );
    let full = decrypt(&enc.model, &licence(&enc.owner_key, 5, None).unwrap()).unwrap();
    assert_eq!(full.model, f.bytes, "byte-exact round trip");
    assert_eq!(full.level, 5);
    let enc_fp = model_fingerprint(&enc.model).unwrap();
    for level in 0..5 {
        let d = decrypt(&enc.model, &licence(&enc.owner_key, level, None).unwrap()).unwrap();
        assert_ne!(
            d.model, f.bytes,
            "level {level} must not restore everything"
        );
        // Level 0 restores nothing; every higher level restores something.
        assert_eq!(model_fingerprint(&d.model).unwrap() == enc_fp, level == 0);
        assert!(d.model.len() < enc.model.len(), "the escrow is dropped");
    }
    // Header: public parameters only, no kernel locations in clear.
    let h = public_header(&enc.model).unwrap();
    assert_eq!((h.levels, h.ratio, h.ranking), (5, 0.2, Ranking::L1));
    assert_eq!(h.tiers.len(), 5);
    assert!(
        public_header(&f.bytes).is_err(),
        "a plain model has no header"
    );
}

#[test]
fn selection_counts_and_tiers_follow_the_paper() {
    let f = fixture();
    let imp = cheap(&f.bytes, Ranking::Mean, &[]);
    let (ratio, levels) = (0.08, 5);
    let enc = encrypt_with_master(
        &f.bytes,
        &imp,
        &plan(ratio, levels, Ranking::Mean),
        &MASTER,
        None,
    )
    .unwrap();
    let mut encrypted = 0;
    for layer in &enc.report.layers {
        let count = selection_count(layer.kernels, ratio);
        assert_eq!(count, (ratio * layer.kernels as f64).floor() as usize + 1);
        assert_eq!(layer.encrypted, count, "{}", layer.name);
        let sizes = set_sizes(count, levels);
        let mut expected = vec![sizes[0]];
        expected.extend(sizes.windows(2).map(|w| w[1] - w[0]));
        assert_eq!(layer.tiers, expected, "{}", layer.name);
        // Exactly the selected kernels changed, and they are the top ones by |mean|.
        let (shape, before) = values(&f.bytes, &layer.name);
        let (_, after) = values(&enc.model, &layer.name);
        let kl = shape[2] * shape[3];
        let changed: Vec<usize> = (0..layer.kernels)
            .filter(|&k| before[k * kl..(k + 1) * kl] != after[k * kl..(k + 1) * kl])
            .collect();
        assert_eq!(changed.len(), count, "{}", layer.name);
        let scores = &imp[&layer.name];
        let min_changed = changed
            .iter()
            .map(|&k| scores[k])
            .fold(f32::INFINITY, f32::min);
        let max_kept = (0..layer.kernels)
            .filter(|k| !changed.contains(k))
            .map(|k| scores[k])
            .fold(f32::NEG_INFINITY, f32::max);
        assert!(min_changed >= max_kept, "{}", layer.name);
        encrypted += count * kl;
    }
    assert_eq!(enc.report.encrypted_params, encrypted);
    assert_eq!(
        enc.report.layers.len(),
        21,
        "every conv layer of ResNet-20 (19 + 2 projections)"
    );
    // Only some layers when asked.
    let some = vec!["conv1".to_string(), "layer3.2.conv2.weight".to_string()];
    let imp = cheap(&f.bytes, Ranking::L1, &some);
    let p = Plan {
        layers: some,
        ..plan(0.5, 2, Ranking::L1)
    };
    let enc = encrypt(&f.bytes, &imp, &p, None).unwrap();
    let names: Vec<&str> = enc.report.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, vec!["conv1.weight", "layer3.2.conv2.weight"]);
    let (_, a) = values(&f.bytes, "layer1.0.conv1.weight");
    let (_, b) = values(&enc.model, "layer1.0.conv1.weight");
    assert_eq!(a, b, "layers not chosen stay as they are");
}

#[test]
fn wrong_tampered_and_foreign_licences_are_refused() {
    let f = fixture();
    let imp = cheap(&f.bytes, Ranking::L1, &[]);
    let p = plan(0.1, 3, Ranking::L1);
    let enc = encrypt(&f.bytes, &imp, &p, Some("owner pass")).unwrap();
    let other = encrypt(&f.bytes, &imp, &p, None).unwrap();
    let good = licence(&enc.owner_key, 3, Some("owner pass")).unwrap();
    assert_eq!(
        decrypt(&enc.model, &good).unwrap().model,
        f.bytes,
        "the right licence works"
    );
    // The owner key needs its passphrase, and only the right one.
    assert!(matches!(
        licence(&enc.owner_key, 3, None),
        Err(Error::Sealed(SealError::NeedsPassphrase { .. }))
    ));
    assert!(matches!(
        licence(&enc.owner_key, 3, Some("guess")),
        Err(Error::Sealed(SealError::Authentication { .. }))
    ));
    assert!(licence(&enc.owner_key, 4, Some("owner pass")).is_err());
    // A licence for another encryption of the same weights: another model.
    let foreign = licence(&other.owner_key, 3, None).unwrap();
    let err = decrypt(&enc.model, &foreign).err().unwrap();
    assert!(
        matches!(err, Error::Sealed(SealError::WrongBinding { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("different model"), "{err}");
    // Tampered licence: every flipped byte is caught.
    for i in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[i] ^= 0x40;
        assert!(decrypt(&enc.model, &bad).is_err(), "byte {i}");
    }
    // A key file where a licence is expected.
    assert!(matches!(
        decrypt(&enc.model, &enc.owner_key),
        Err(Error::Sealed(SealError::WrongPurpose { .. }))
    ));
    // Tampered weights: the fingerprint changes, the licence no longer fits.
    let mut tampered = enc.model.clone();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x01;
    assert!(matches!(
        decrypt(&tampered, &good),
        Err(Error::Sealed(SealError::WrongBinding { .. }))
    ));
    // Tampered escrow in the header: authentication fails.
    let text = String::from_utf8_lossy(&enc.model).into_owned();
    let h = public_header(&enc.model).unwrap();
    let tier = &h.tiers[1];
    let pos = text.find(tier.as_str()).unwrap() + 10;
    let mut tampered = enc.model.clone();
    tampered[pos] = if tampered[pos] == b'A' { b'B' } else { b'A' };
    let err = decrypt(&tampered, &good).err().unwrap();
    assert!(
        matches!(err, Error::Sealed(SealError::Authentication { .. })),
        "{err}"
    );
    // A level-1 licence only opens tier 0; it still decrypts, partially.
    let partial = licence(&enc.owner_key, 1, Some("owner pass")).unwrap();
    assert_eq!(decrypt(&enc.model, &partial).unwrap().level, 1);
    // Messages carry no secret: no passphrase.
    for e in [
        licence(&enc.owner_key, 3, Some("guess")).err().unwrap(),
        decrypt(&enc.model, &foreign).err().unwrap(),
    ] {
        assert!(!e.to_string().contains("guess"));
    }
}

#[test]
fn accuracy_rises_level_by_level() {
    let f = fixture();
    let imp = cheap(&f.bytes, Ranking::L1, &[]);
    let levels = 5;
    let enc = encrypt_with_master(
        &f.bytes,
        &imp,
        &plan(0.5, levels, Ranking::L1),
        &MASTER,
        None,
    )
    .unwrap();
    let acc: Vec<f64> = (0..=levels)
        .map(|m| {
            let d = decrypt(&enc.model, &licence(&enc.owner_key, m, None).unwrap()).unwrap();
            accuracy_of(&model_from(&d.model), &f.test)
        })
        .collect();
    eprintln!("accuracy per level: {acc:?} (victim {})", f.accuracy);
    assert!(
        acc[0] < f.accuracy - 0.4,
        "no licence must be far worse: {acc:?}"
    );
    assert_eq!(acc[levels], f.accuracy, "the full licence is the victim");
    for m in 1..=levels {
        // Restoring more kernels never costs more than noise on 256 test images.
        assert!(acc[m] >= acc[m - 1] - 0.02, "level {m}: {acc:?}");
    }
    assert!(acc[levels - 1] > acc[0], "{acc:?}");
}

#[test]
fn masked_kernels_keep_the_layer_statistics() {
    let f = fixture();
    let name = "layer3.1.conv1.weight";
    let imp = cheap(&f.bytes, Ranking::L1, &[name.to_string()]);
    let p = Plan {
        layers: vec![name.to_string()],
        ..plan(0.4, 5, Ranking::L1)
    };
    let enc = encrypt_with_master(&f.bytes, &imp, &p, &MASTER, None).unwrap();
    let (shape, before) = values(&f.bytes, name);
    let (_, after) = values(&enc.model, name);
    let kl = shape[2] * shape[3];
    let kernels = shape[0] * shape[1];
    let layer = layer_stats(&before, kernels, kl);
    let masked: Vec<usize> = (0..kernels)
        .filter(|&k| before[k * kl..(k + 1) * kl] != after[k * kl..(k + 1) * kl])
        .collect();
    assert_eq!(masked.len(), selection_count(kernels, 0.4));
    let pick = |v: &[f32]| -> Vec<f32> {
        masked
            .iter()
            .flat_map(|&k| v[k * kl..(k + 1) * kl].to_vec())
            .collect()
    };
    let n = masked.len() as f64;
    let stored = layer_stats(&pick(&after), masked.len(), kl);
    let original = layer_stats(&pick(&before), masked.len(), kl);
    let mut original_off = 0.0f64;
    for p in 0..kl {
        let se = layer.sigma[p] / n.sqrt();
        assert!(
            (stored.mu[p] - layer.mu[p]).abs() < 4.0 * se,
            "position {p}: mean {} vs layer {}",
            stored.mu[p],
            layer.mu[p]
        );
        let ratio = stored.sigma[p] / layer.sigma[p];
        assert!((ratio - 1.0).abs() < 0.1, "position {p}: std ratio {ratio}");
        original_off = original_off.max(original.sigma[p] / layer.sigma[p]);
    }
    // The selected originals (largest L1) do not look like the layer: the mask hides that.
    assert!(
        original_off > 1.15,
        "the L1-selected kernels are wider than the layer ({original_off})"
    );
}

#[test]
fn pss_ranks_kernels_that_carry_nothing_last() {
    // Zero half of one layer's kernels: their gates get no cross-entropy gradient, only the
    // L0 pressure, so PSS must rank them below the kernels the network uses.
    let f = fixture();
    let copy = f.victim.deep_copy().unwrap();
    let name = "layer2.0.conv1.weight";
    let var = copy.params.get(name).unwrap();
    let (o, i, k, _) = var.dims4().unwrap();
    let mut v = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let kl = k * k;
    let zeroed: Vec<bool> = (0..o * i).map(|j| (j * 7919) % 2 == 1).collect();
    for (j, z) in zeroed.iter().enumerate() {
        if *z {
            v[j * kl..(j + 1) * kl].fill(0.0);
        }
    }
    var.set(&candle_core::Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
        .unwrap();
    let bytes = copy.params.to_safetensors_bytes().unwrap();
    let cfg = PssConfig {
        epochs: 2,
        max_images: 256,
        batch_size: 64,
        ..PssConfig::default()
    };
    let imp = importance(
        &bytes,
        Ranking::Pss,
        &[name.to_string()],
        Some((&copy.spec, &copy.params)),
        Some((&f.train, Some(&NORM))),
        &cfg,
        0,
        false,
        &Device::Cpu,
        false,
    )
    .unwrap();
    let scores = &imp[name];
    assert_eq!(scores.len(), o * i);
    // The zeroed kernels saw only the L0 pressure, so they share one score; a used kernel whose
    // gate got no gradient either (its input dead after a ReLU) ties with them, which is why
    // this asks for enough used kernels at or above that score rather than for a top quarter
    // free of zeroed ones (top_kernels breaks ties by index).
    let zeroed_scores: Vec<f32> = (0..o * i)
        .filter(|&j| zeroed[j])
        .map(|j| scores[j])
        .collect();
    let s0 = zeroed_scores[0];
    assert!(
        zeroed_scores.iter().all(|&s| s == s0),
        "kernels that carry nothing were told apart"
    );
    let used_at_or_above = (0..o * i)
        .filter(|&j| !zeroed[j] && scores[j] >= s0)
        .count();
    assert!(
        used_at_or_above >= o * i / 4,
        "only {used_at_or_above} used kernels rank at or above the empty ones (want {})",
        o * i / 4
    );
    assert!(
        scores.iter().any(|&s| s != scores[0]),
        "the gates moved apart"
    );
}

#[test]
fn the_defence_gives_levels_owner_and_stolen_weights() {
    let f = fixture();
    let registry = defences::registry();
    let table: toml::Table = toml::from_str("ranking = \"l1\"\nratio = 0.3\nlevels = 3").unwrap();
    let defence = registry.build("selective-encryption", &table).unwrap();
    let ctx = DefenceContext {
        device: &Device::Cpu,
        owner_data: &f.train,
        normalization: NORM,
        seed: 0,
        progress: false,
    };
    let victim = Victim {
        model: f.victim.clone(),
        train: recipe(),
        task: harness_core::Task::Classification,
    };
    let prot = defence.protect(&ctx, &victim).unwrap();
    let names: Vec<&str> = prot.levels.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["level-0", "level-1", "level-2"]);
    let xs = datasets::batch::to_tensor(&f.test, &[0, 1, 2, 3], Some(&NORM), &Device::Cpu).unwrap();
    let a = prot.owner.logits(&xs).unwrap().to_vec2::<f32>().unwrap();
    let b = f
        .victim
        .model
        .forward_t(&xs, false)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(a, b, "the owner runs the victim");
    let stolen = prot.stolen.unwrap();
    let harness_core::protect::Disclosure::SelectiveEncryption(header) = &stolen.public else {
        panic!(
            "a selectively encrypted model discloses its header, got {:?}",
            stolen.public
        );
    };
    assert!(!header.layers.is_empty());
    assert!(stolen.is_whole());
    let text = serde_json::to_string(&stolen.public).unwrap();
    assert!(
        !text.contains("tiers") && !text.contains("kernel\":"),
        "{text}"
    );
    let metrics: Vec<&str> = prot.measures.iter().map(|m| m.metric.as_str()).collect();
    for m in [
        "encrypted-fraction",
        "encrypted-conv-fraction",
        "encrypt-seconds",
        "decrypt-seconds",
        "licence-bytes",
        "pss-epochs",
    ] {
        assert!(metrics.contains(&m), "{m} in {metrics:?}");
    }
    let frac = prot
        .measures
        .iter()
        .find(|m| m.metric == "encrypted-conv-fraction")
        .unwrap()
        .value;
    assert!((0.3..0.35).contains(&frac), "{frac}");
}

/// The stolen (encrypted) weights of one protection, as bytes.
fn stolen_bytes(settings: &str, seed: u64) -> Vec<u8> {
    let f = fixture();
    let table: toml::Table = toml::from_str(settings).unwrap();
    let defence = defences::registry()
        .build("selective-encryption", &table)
        .unwrap();
    let ctx = DefenceContext {
        device: &Device::Cpu,
        owner_data: &f.train,
        normalization: NORM,
        seed,
        progress: false,
    };
    let victim = Victim {
        model: f.victim.clone(),
        train: recipe(),
        task: harness_core::Task::Classification,
    };
    let prot = defence.protect(&ctx, &victim).unwrap();
    prot.stolen.unwrap().params.to_safetensors_bytes().unwrap()
}

#[test]
fn matrix_rows_repeat_for_a_seed_and_a_deployment_key_is_fresh() {
    // In the matrix the key and a random ranking come from the cell's seed: the same seed gives
    // the same encrypted weights (so the levels and the attacks on them repeat), another seed
    // other ones; `os_random_key` draws a fresh key every time, as a deployment must.
    let seeded = "ranking = \"random\"\nratio = 0.3\nlevels = 2";
    assert_eq!(stolen_bytes(seeded, 3), stolen_bytes(seeded, 3));
    assert_ne!(stolen_bytes(seeded, 3), stolen_bytes(seeded, 4));
    let fresh = format!("{seeded}\nos_random_key = true");
    assert_ne!(stolen_bytes(&fresh, 3), stolen_bytes(&fresh, 3));
}
