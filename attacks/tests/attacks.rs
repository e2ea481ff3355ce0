//! End-to-end checks of every attack against a small victim: ResNet-20 trained for a few epochs
//! on 8x8 synthetic images (owner half of the train split), attacked with the other half.
#![expect(
    clippy::unwrap_used,
    reason = "test fixtures and helpers unwrap: a failure there is a failed test"
)]

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use attacks::adv_train::{AdvTrain, AdvTrainConfig};
use attacks::extraction::{Extraction, ExtractionConfig, Labels};
use attacks::fine_tune::{FineTune, FineTuneConfig, Variant};
use attacks::prune::{Prune, PruneConfig, prunable, prune_globally};
use attacks::scratch::{Scratch, ScratchConfig};
use candle_core::{DType, Device, Tensor};
use datasets::ImageSet;
use harness_core::eval::{agreement, evaluate, predict};
use harness_core::protect::{
    AttackContext, Budget, DisclosureKind, Exposure, Oracle, OutputMode, PlainModel, Requirement,
    StolenArtifact,
};
use harness_core::train::TrainConfig;
use harness_core::{Arch, ParamStore};

use harness_core::testkit::{self, NORM};

struct Fixture {
    victim: PlainModel,
    attacker: ImageSet,
    test: ImageSet,
    recipe: TrainConfig,
}

/// The victim, trained once per test binary and shared by every test.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let data = testkit::synthetic_data().unwrap();
        let start = Instant::now();
        let victim = testkit::train_victim(&data.owner).unwrap();
        let acc = evaluate(
            victim.model.model.as_ref(),
            &data.test,
            Some(&NORM),
            256,
            &Device::Cpu,
        )
        .unwrap()
        .top1;
        eprintln!(
            "victim: test accuracy {acc:.3} after {:.1}s",
            start.elapsed().as_secs_f64()
        );
        Fixture {
            victim: victim.model,
            attacker: data.attacker,
            test: data.test,
            recipe: victim.train,
        }
    })
}

fn ctx<'a>(f: &'a Fixture, attacker: &'a ImageSet) -> AttackContext<'a> {
    AttackContext {
        device: &Device::Cpu,
        attacker_data: attacker,
        transfer_data: attacker,
        normalization: NORM,
        train: f.recipe.clone(),
        seed: 7,
        progress: false,
    }
}

fn stolen(f: &Fixture) -> Exposure {
    Exposure {
        stolen: Some(StolenArtifact::plain(
            f.victim.spec.clone(),
            f.victim.params.deep_copy().unwrap(),
        )),
        oracle: None,
    }
}

fn budget(epochs: usize, queries: Option<u64>) -> Budget {
    Budget { epochs, queries }
}

/// Every tensor of a store as f32 values, by name.
fn values(params: &ParamStore) -> Vec<(String, Vec<f32>)> {
    params
        .names()
        .into_iter()
        .map(|n| {
            let t = params.get(&n).unwrap();
            let v = t
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (n, v)
        })
        .collect()
}

fn oracle(f: &Fixture, mode: OutputMode, limit: Option<u64>) -> Exposure {
    Exposure {
        stolen: None,
        oracle: Some(Oracle::new(Arc::new(f.victim.clone()), mode, Vec::new()).with_limit(limit)),
    }
}

fn fidelity(f: &Fixture, model: &PlainModel) -> f64 {
    let victim = predict(
        f.victim.model.as_ref(),
        &f.test,
        Some(&NORM),
        256,
        &Device::Cpu,
    )
    .unwrap();
    let copy = predict(
        model.model.as_ref(),
        &f.test,
        Some(&NORM),
        256,
        &Device::Cpu,
    )
    .unwrap();
    agreement(&victim, &copy)
}

fn accuracy(model: &PlainModel, set: &ImageSet) -> f64 {
    evaluate(model.model.as_ref(), set, Some(&NORM), 256, &Device::Cpu)
        .unwrap()
        .top1
}

fn measure(measures: &[harness_core::protect::Measure], name: &str) -> f64 {
    measures
        .iter()
        .find(|m| m.metric == name)
        .map(|m| m.value)
        .unwrap()
}

fn head(f: &Fixture) -> &'static str {
    f.victim.spec.head_prefix()
}

#[test]
fn victim_is_trained() {
    let f = fixture();
    assert!(
        accuracy(&f.victim, &f.test) > 0.5,
        "the fixture must learn the task"
    );
}

#[test]
fn extraction_with_soft_labels_copies_the_victim_within_budget() {
    let f = fixture();
    let start = Instant::now();
    let exposure = oracle(f, OutputMode::Soft, Some(200));
    let attack = Extraction::new(ExtractionConfig {
        query_batch: 64,
        ..ExtractionConfig::default()
    })
    .unwrap();
    let out = attack
        .steal(&ctx(f, &f.attacker), &exposure, &budget(6, Some(200)))
        .unwrap();
    let ledger = exposure.oracle.as_ref().unwrap().ledger().images();
    assert_eq!(
        ledger, 200,
        "exactly the budget is queried (200 of 256 images)"
    );
    assert_eq!(measure(&out.measures, "queries-used"), 200.0);
    assert_eq!(out.model.spec.num_classes, 10);
    let fid = fidelity(f, &out.model);
    eprintln!(
        "soft extraction: fidelity {fid:.3} in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    assert!(fid > 0.4, "substitute agreement {fid} is near chance (0.1)");
}

#[test]
fn extraction_runs_with_hard_labels_and_a_label_only_oracle() {
    let f = fixture();
    let small = f.attacker.select(&(0..64).collect::<Vec<_>>());
    for (labels, mode) in [
        (Labels::Hard, OutputMode::Soft),
        (Labels::Soft, OutputMode::Label),
        (Labels::Hard, OutputMode::TopK(3)),
    ] {
        let exposure = oracle(f, mode, None);
        let attack = Extraction::new(ExtractionConfig {
            labels,
            query_batch: 50,
            ..ExtractionConfig::default()
        })
        .unwrap();
        let out = attack
            .steal(&ctx(f, &small), &exposure, &budget(1, Some(1000)))
            .unwrap();
        let ledger = exposure.oracle.as_ref().unwrap().ledger().images();
        assert_eq!(
            ledger, 64,
            "{labels:?} {mode:?}: a budget above the transfer set queries it all once"
        );
        assert_eq!(measure(&out.measures, "queries-used"), 64.0);
    }
}

#[test]
fn extraction_stops_at_the_oracle_limit() {
    let f = fixture();
    let exposure = oracle(f, OutputMode::Soft, Some(10));
    let attack = Extraction::new(ExtractionConfig::default()).unwrap();
    // The budget says 20 but the API refuses after 10: the attack fails, nothing is overcharged.
    assert!(
        attack
            .steal(&ctx(f, &f.attacker), &exposure, &budget(1, Some(20)))
            .is_err()
    );
    assert!(exposure.oracle.as_ref().unwrap().ledger().images() <= 10);
    let none = Exposure::default();
    assert!(
        attack
            .steal(&ctx(f, &f.attacker), &none, &budget(1, Some(20)))
            .is_err()
    );
    let zero = oracle(f, OutputMode::Soft, None);
    assert!(
        attack
            .steal(&ctx(f, &f.attacker), &zero, &budget(1, Some(0)))
            .is_err()
    );
}

fn fine_tune(f: &Fixture, variant: Variant, epochs: usize, data: &ImageSet) -> PlainModel {
    FineTune::new(FineTuneConfig {
        variant,
        ..FineTuneConfig::default()
    })
    .unwrap()
    .steal(&ctx(f, data), &stolen(f), &budget(epochs, None))
    .unwrap()
    .model
}

/// Names of tensors whose values differ between the victim and `model`.
fn changed(f: &Fixture, model: &PlainModel) -> Vec<String> {
    values(&f.victim.params)
        .into_iter()
        .zip(values(&model.params))
        .filter(|((na, a), (nb, b))| {
            assert_eq!(na, nb);
            a != b
        })
        .map(|((n, _), _)| n)
        .collect()
}

#[test]
fn ftll_changes_only_the_head() {
    let f = fixture();
    let small = f.attacker.select(&(0..64).collect::<Vec<_>>());
    let model = fine_tune(f, Variant::Ftll, 1, &small);
    let changed = changed(f, &model);
    assert!(!changed.is_empty(), "ftll must train the head");
    assert!(
        changed.iter().all(|n| n.starts_with(head(f))),
        "ftll changed {changed:?}"
    );
}

#[test]
fn rtll_and_rtal_replace_the_head_even_without_training() {
    let f = fixture();
    for variant in [Variant::Rtll, Variant::Rtal] {
        let model = fine_tune(f, variant, 0, &f.attacker);
        let changed = changed(f, &model);
        let head_names: Vec<String> = f
            .victim
            .params
            .names()
            .into_iter()
            .filter(|n| n.starts_with(head(f)))
            .collect();
        assert_eq!(changed, head_names, "{variant:?}");
        // A fresh head forgets the task: accuracy drops to about chance.
        assert!(accuracy(&model, &f.test) < 0.5, "{variant:?}");
    }
}

#[test]
fn ftal_changes_every_tensor_and_keeps_accuracy() {
    let f = fixture();
    let small = f.attacker.select(&(0..64).collect::<Vec<_>>());
    let model = fine_tune(f, Variant::Ftal, 1, &small);
    let changed = changed(f, &model);
    assert_eq!(
        changed,
        f.victim.params.names(),
        "ftal must move every tensor"
    );
    assert!(accuracy(&model, &f.test) > 0.3);
    // The victim itself is untouched.
    assert!(accuracy(&f.victim, &f.test) > 0.5);
}

#[test]
fn pruning_reaches_the_rate_and_fine_tuning_keeps_the_zeros() {
    let f = fixture();
    // Pruning alone: exactly the rate.
    let n: usize = prunable(&f.victim.params)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    let alone = Prune::new(PruneConfig {
        rate: 0.7,
        fine_tune: false,
        ..PruneConfig::default()
    })
    .unwrap()
    .steal(&ctx(f, &f.attacker), &stolen(f), &budget(3, None))
    .unwrap();
    let s = measure(&alone.measures, "sparsity");
    assert!((s - 0.7).abs() <= 1.0 / n as f64, "sparsity {s}");
    // With fine-tuning: the pruned positions stay zero.
    let small = f.attacker.select(&(0..64).collect::<Vec<_>>());
    let tuned = Prune::new(PruneConfig {
        rate: 0.7,
        ..PruneConfig::default()
    })
    .unwrap()
    .steal(&ctx(f, &small), &stolen(f), &budget(1, None))
    .unwrap();
    let reference = f.victim.params.deep_copy().unwrap();
    let masks = prune_globally(&reference, 0.7).unwrap();
    let tuned_vars = prunable(&tuned.model.params);
    assert_eq!(masks.len(), tuned_vars.len());
    let mut moved = false;
    for ((mask_var, mask), (name, var)) in masks.iter().zip(&tuned_vars) {
        let m = mask.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let before = mask_var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for ((m, w), b) in m.iter().zip(&w).zip(&before) {
            if *m == 0.0 {
                assert_eq!(*w, 0.0, "{name}: a pruned weight came back");
            } else if w != b {
                moved = true;
            }
        }
    }
    assert!(moved, "fine-tuning must move the kept weights");
    assert!(measure(&tuned.measures, "sparsity") >= 0.7 - 1.0 / n as f64);
}

#[test]
fn pgd_stays_in_the_ball_and_raises_the_victims_loss() {
    let f = fixture();
    let n = 64;
    let idx: Vec<usize> = (0..n).collect();
    let images = datasets::batch::to_tensor(&f.test, &idx, Some(&NORM), &Device::Cpu).unwrap();
    let labels = Tensor::new(&f.test.labels[..n], &Device::Cpu).unwrap();
    let pgd = AdvTrainConfig::default().pgd();
    let adv = pgd
        .perturb(f.victim.model.as_ref(), &images, &labels, &NORM, 3)
        .unwrap();
    // Back to pixel space: (x * std + mean); all channels share 0.5 / 0.25 here.
    let pixels = |t: &Tensor| ((t * 0.25).unwrap() + 0.5).unwrap();
    let delta = (pixels(&adv) - pixels(&images))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        delta <= 8.0 / 255.0 + 1e-5,
        "perturbation {delta} exceeds eps"
    );
    let p = pixels(&adv)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(p.iter().all(|v| (-1e-5..=1.0 + 1e-5).contains(v)));
    let loss = |x: &Tensor| {
        let logits = f.victim.model.forward_t(x, false).unwrap();
        candle_nn::loss::cross_entropy(&logits, &labels)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (clean, attacked) = (loss(&images), loss(&adv));
    eprintln!("victim loss: clean {clean:.3}, PGD {attacked:.3}");
    assert!(
        attacked > clean + 0.1,
        "PGD must raise the loss ({clean} -> {attacked})"
    );
}

#[test]
fn adversarial_training_runs_and_reports_robust_accuracy() {
    let f = fixture();
    let start = Instant::now();
    let small = f.attacker.select(&(0..64).collect::<Vec<_>>());
    let out = AdvTrain::new(AdvTrainConfig {
        robust_eval_images: 32,
        ..AdvTrainConfig::default()
    })
    .unwrap()
    .steal(&ctx(f, &small), &stolen(f), &budget(1, None))
    .unwrap();
    let robust = measure(&out.measures, "robust-accuracy");
    assert!((0.0..=1.0).contains(&robust));
    assert!(
        !changed(f, &out.model).is_empty(),
        "adversarial training moved nothing"
    );
    eprintln!(
        "adv-train: robust accuracy {robust:.3}, clean test accuracy {:.3}, {:.1}s",
        accuracy(&out.model, &f.test),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn scratch_trains_the_stolen_architecture_on_attacker_data_only() {
    let f = fixture();
    let attack = Scratch::new(ScratchConfig::default()).unwrap();
    let exposure = stolen(f);
    let out = attack
        .steal(&ctx(f, &f.attacker), &exposure, &budget(4, None))
        .unwrap();
    assert_eq!(out.model.spec, f.victim.spec);
    // Trained afresh: no tensor equals the victim's (the init seed is the attacker's own).
    let victim = values(&f.victim.params);
    let own = values(&out.model.params);
    for ((name, a), (_, b)) in victim.iter().zip(&own) {
        if name.ends_with("weight")
            && a.len() > 1
            && !name.starts_with("bn")
            && !name.contains(".bn")
        {
            assert_ne!(a, b, "{name} equals the victim's");
        }
    }
    let (own_acc, test_acc) = (
        accuracy(&out.model, &f.attacker),
        accuracy(&out.model, &f.test),
    );
    eprintln!("scratch: attacker-data accuracy {own_acc:.3}, test accuracy {test_acc:.3}");
    assert!(
        own_acc > 0.3,
        "it learns from the attacker data ({own_acc})"
    );
    // Nothing exposed: the configured architecture, the attacker data's classes.
    let vgg = Scratch::new(ScratchConfig {
        arch: "mobilenet-v2".into(),
        width: 0.25,
    })
    .unwrap();
    let out = vgg
        .steal(&ctx(f, &f.attacker), &Exposure::default(), &budget(0, None))
        .unwrap();
    assert_eq!(out.model.spec.arch, Arch::MobilenetV2);
    assert_eq!(out.model.spec.num_classes, f.attacker.num_classes());
    assert_eq!(out.model.spec.width, 0.25);
}

#[test]
fn registry_lists_every_attack_with_its_requirement() {
    let registry = attacks::registry();
    let ids: Vec<&str> = registry.ids().collect();
    assert_eq!(
        ids,
        [
            "extraction",
            "fine-tune",
            "prune",
            "adv-train",
            "reinit-encrypted",
            "scratch",
            "edgepro-guess",
            "edgepro-prune"
        ]
    );
    let expected = [
        ("extraction", Requirement::Oracle, None),
        ("fine-tune", Requirement::Weights, None),
        ("prune", Requirement::Weights, None),
        ("adv-train", Requirement::Weights, None),
        (
            "reinit-encrypted",
            Requirement::Weights,
            Some(DisclosureKind::SelectiveEncryption),
        ),
        ("scratch", Requirement::Nothing, None),
        (
            "edgepro-guess",
            Requirement::Weights,
            Some(DisclosureKind::Edgepro),
        ),
        (
            "edgepro-prune",
            Requirement::Weights,
            Some(DisclosureKind::Edgepro),
        ),
    ];
    let bad: toml::Table = toml::from_str("no_such_setting = 1").unwrap();
    for (id, need, target) in expected {
        let attack = registry.build(id, &toml::Table::new()).unwrap();
        assert_eq!(attack.requires(), need, "{id}");
        assert_eq!(attack.targets(), target, "{id}");
        let err = registry.build(id, &bad).err().unwrap().to_string();
        assert!(err.contains("no_such_setting"), "{id}: {err}");
    }
    let err = registry.get("finetune").err().unwrap().to_string();
    assert!(err.contains("fine-tune"), "{err}");
}
