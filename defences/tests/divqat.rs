//! `qat` and `divqat` on the small synthetic victim: the quantized deployment keeps the victim's
//! accuracy and is about a quarter of its size, the stolen (dequantized) weights compute what the
//! deployment computes up to the rounding of layer inputs, DivQAT with alpha 0 is plain QAT bit
//! for bit, and a positive alpha moves the quantized model's answers away from the f32 model's.

use std::sync::OnceLock;

use candle_core::Device;
use datasets::ImageSet;
use harness_core::eval::agreement;
use harness_core::protect::{DefenceContext, Deployed, Protected, Victim};
use harness_core::testkit::{self, NORM, SyntheticData, recipe};

fn fixture() -> &'static (SyntheticData, Victim) {
    static F: OnceLock<(SyntheticData, Victim)> = OnceLock::new();
    F.get_or_init(|| {
        let data = testkit::synthetic_data().expect("synthetic data");
        let victim = testkit::train_victim(&data.train).expect("victim trains");
        (data, victim)
    })
}

fn protect(id: &str, settings: &str) -> Protected {
    let (data, victim) = fixture();
    let table: toml::Table = toml::from_str(settings).expect("settings parse");
    let defence = defences::registry()
        .build(id, &table)
        .expect("defence builds");
    let ctx = DefenceContext {
        device: &Device::Cpu,
        owner_data: &data.owner,
        normalization: NORM,
        seed: 0,
        progress: false,
    };
    let victim = Victim {
        model: victim.model.clone(),
        train: recipe(),
        task: harness_core::Task::Classification,
    };
    defence.protect(&ctx, &victim).expect("protect")
}

fn predict(model: &dyn Deployed, set: &ImageSet) -> Vec<u32> {
    let idx: Vec<usize> = (0..set.len()).collect();
    let xs = datasets::batch::to_tensor(set, &idx, Some(&NORM), &Device::Cpu).expect("batch");
    model
        .logits(&xs)
        .and_then(|l| Ok(l.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?))
        .expect("logits")
}

fn measure(p: &Protected, metric: &str) -> f64 {
    p.measures
        .iter()
        .find(|m| m.metric == metric)
        .unwrap_or_else(|| panic!("no {metric}"))
        .value
}

/// What the runner records of `p` on the test set.
fn test_set_measure(p: &Protected, metric: &str) -> f64 {
    let (data, _) = fixture();
    let owner = predict(&*p.owner, &data.test);
    p.test_set_check
        .as_ref()
        .expect("a quantized deployment has a test-set check")
        .measure(&data.test, &NORM, &owner, &Device::Cpu)
        .expect("test-set check")
        .into_iter()
        .find(|m| m.metric == metric)
        .unwrap_or_else(|| panic!("no {metric}"))
        .value
}

#[test]
fn qat_keeps_accuracy_at_a_quarter_of_the_size_and_the_thief_gets_the_dequantized_model() {
    let (data, victim) = fixture();
    let p = protect(
        "qat",
        "epochs = 2\nfreeze_bn_after = 1\nfreeze_observers_after = 1",
    );
    let labels = &data.test.labels;
    let victim_acc = agreement(&predict(&victim.model, &data.test), labels);
    let owner = predict(&*p.owner, &data.test);
    let owner_acc = agreement(&owner, labels);
    assert!(
        owner_acc > victim_acc - 0.1,
        "int8 QAT lost accuracy: {owner_acc} against the victim's {victim_acc}"
    );
    let ratio = p.owner.model_bytes() as f64 / victim.model.model_bytes() as f64;
    assert!((0.2..0.35).contains(&ratio), "int8 size ratio {ratio}");
    let stolen = p
        .stolen
        .as_ref()
        .expect("weights exposed")
        .rebuild()
        .expect("rebuild");
    let same = agreement(&predict(&stolen, &data.test), &owner);
    assert!(
        same > 0.9,
        "dequantized weights agree with the deployment on {same}"
    );
    assert!(measure(&p, "qat-epochs") == 2.0);
    assert!(test_set_measure(&p, "int8-agreement") >= 0.99);
    let fake = test_set_measure(&p, "fake-quant-accuracy");
    let change = test_set_measure(&p, "int8-accuracy-change");
    assert!(
        (owner_acc - fake - change).abs() < 1e-9,
        "int8 accuracy {owner_acc}, fake-quant {fake}, recorded change {change}"
    );
}

#[test]
fn divqat_with_alpha_zero_is_qat_and_a_positive_alpha_raises_the_divergence() {
    let (data, _) = fixture();
    let common = "epochs = 2\nfreeze_bn_after = 1\nfreeze_observers_after = 1";
    let qat = protect("qat", common);
    let zero = protect("divqat", &format!("{common}\nalpha = 0.0"));
    let idx: Vec<usize> = (0..16).collect();
    let xs = datasets::batch::to_tensor(&data.test, &idx, Some(&NORM), &Device::Cpu).expect("x");
    let a = qat
        .owner
        .logits(&xs)
        .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?));
    let b = zero
        .owner
        .logits(&xs)
        .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?));
    assert_eq!(a.expect("qat logits"), b.expect("divqat logits"));
    let pushed = protect("divqat", &format!("{common}\nalpha = 2.0\ncap = 5.0"));
    let (d0, d1) = (
        test_set_measure(&qat, "divergence"),
        test_set_measure(&pushed, "divergence"),
    );
    assert!(
        d1 > 2.0 * d0 && d1 > 0.05,
        "divergence {d0} (qat) -> {d1} (divqat)"
    );
}

#[test]
fn the_int8_deployment_agrees_with_the_fake_quantized_model() {
    use harness_core::quant::{
        FakeQuantModel, FreezeSchedule, Int8Model, quantization_aware_training,
    };
    let (data, victim) = fixture();
    let model = victim.model.deep_copy().expect("copy");
    let recipe = harness_core::train::TrainConfig {
        epochs: 2,
        ..recipe()
    };
    let schedule = FreezeSchedule {
        batch_norm_after: 1,
        observers_after: 1,
    };
    let (qat, _) = quantization_aware_training(
        &model,
        &data.owner,
        &recipe,
        schedule,
        None,
        false,
        &Device::Cpu,
    )
    .expect("QAT");
    let fq = FakeQuantModel::new(model, qat);
    let int8 = Int8Model::convert(&fq).expect("convert");
    let a = predict(&fq, &data.test);
    let b = predict(&int8, &data.test);
    let agree = agreement(&a, &b);
    assert!(
        agree >= 0.99,
        "int8 agrees with fake quantization on {agree}"
    );
    // The logits differ by float rounding only (the integer sums are exact).
    let idx: Vec<usize> = (0..8).collect();
    let xs = datasets::batch::to_tensor(&data.test, &idx, Some(&NORM), &Device::Cpu).expect("x");
    let la = fq
        .logits(&xs)
        .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
        .expect("fq");
    let lb = int8
        .logits(&xs)
        .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
        .expect("i8");
    let scale = la.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let diff = la
        .iter()
        .zip(&lb)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        diff / scale < 0.05,
        "largest logit difference {diff} of {scale}"
    );
    let ratio = int8.model_bytes() as f64 / victim.model.model_bytes() as f64;
    assert!((0.2..0.35).contains(&ratio), "int8 size ratio {ratio}");
}
