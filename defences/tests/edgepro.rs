//! EdgePro end to end on a small victim: ResNet-20 trained for a few epochs on 8x8 synthetic
//! images (owner half of the train split), then locked.
#![expect(
    clippy::unwrap_used,
    reason = "test fixtures and helpers unwrap: a failure there is a failed test"
)]

use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use datasets::ImageSet;
use defences::edgepro::lock_training::LockObjective;
use defences::edgepro::password::Password;
use defences::edgepro::selection::{lock_count, pool_size};
use defences::edgepro::{EdgePro, EdgeProConfig, owner_deployment};
use harness_core::Error;
use harness_core::eval::evaluate;
use harness_core::protect::Disclosure;
use harness_core::protect::{Defence, DefenceContext, Deployed, PlainModel, Victim};
use harness_core::sealed::SealError;
use harness_core::zoo::StageHook;

use harness_core::testkit::{self, NORM};

struct Fixture {
    victim: Victim,
    owner: ImageSet,
    test: ImageSet,
}

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
            "victim: {} owner images, test accuracy {acc:.3} after {:.1}s",
            data.owner.len(),
            start.elapsed().as_secs_f64()
        );
        Fixture {
            victim,
            owner: data.owner,
            test: data.test,
        }
    })
}

fn ctx(f: &Fixture, seed: u64) -> DefenceContext<'_> {
    DefenceContext {
        device: &Device::Cpu,
        owner_data: &f.owner,
        normalization: NORM,
        seed,
        progress: false,
    }
}

fn edgepro(config: EdgeProConfig) -> EdgePro {
    EdgePro::new(config).unwrap()
}

fn accuracy(model: &dyn Deployed, set: &ImageSet) -> f64 {
    let xs = datasets::batch::to_tensor(
        set,
        &(0..set.len()).collect::<Vec<_>>(),
        Some(&NORM),
        &Device::Cpu,
    )
    .unwrap();
    let pred = model
        .logits(&xs)
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let hits = pred.iter().zip(&set.labels).filter(|(p, l)| p == l).count();
    hits as f64 / set.len() as f64
}

#[test]
fn authorised_neurons_come_from_the_top_of_the_ranking_in_the_right_numbers() {
    let f = fixture();
    let d = edgepro(EdgeProConfig::default());
    let model = f.victim.model.model.as_ref();
    let stages = model.stages();
    let groups = model.groups();
    let a = d.make_password(&ctx(f, 1), &f.victim.model, 1).unwrap();
    let rankings = d.rankings(&ctx(f, 1), &f.victim.model, 1).unwrap();
    assert_eq!(
        a.locks.len(),
        groups.len(),
        "every group (stem, layer1..3, pool) is locked by default"
    );
    for ((lock, (index, ranking)), (at, group)) in a.locks.iter().zip(&rankings).zip(&groups) {
        let info = &stages[*index];
        assert_eq!(index, at);
        assert_eq!(&lock.stage, group);
        assert_eq!(info.group.as_ref(), Some(group));
        assert_eq!(
            lock.neurons.len(),
            lock_count(info.channels, 0.1),
            "{}",
            info.name
        );
        let pool = &ranking[..pool_size(info.channels, 0.3)];
        assert!(
            lock.neurons.iter().all(|n| pool.contains(n)),
            "{}: {:?} not all in the top 30% {pool:?}",
            info.name,
            lock.neurons
        );
        let mut distinct = lock.neurons.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), lock.neurons.len());
        assert!(lock.values.iter().all(|&v| v == 0.0));
    }
    // 16-channel stages lock 2, 64-channel stages 7.
    assert_eq!(a.locks[0].neurons.len(), 2);
    assert_eq!(a.locks[4].neurons.len(), 7);
    // The same seed gives the same password; another seed another one.
    assert_eq!(d.make_password(&ctx(f, 1), &f.victim.model, 1).unwrap(), a);
    let b = d.make_password(&ctx(f, 2), &f.victim.model, 2).unwrap();
    assert_ne!(a, b);
    // Only the chosen stages are locked.
    let some = edgepro(EdgeProConfig {
        stages: Some(vec!["layer3".into(), "stem".into()]),
        ..EdgeProConfig::default()
    });
    let p = some.make_password(&ctx(f, 1), &f.victim.model, 1).unwrap();
    let names: Vec<&str> = p.locks.iter().map(|l| l.stage.as_str()).collect();
    assert_eq!(names, ["stem", "layer3"]);
    let typo = edgepro(EdgeProConfig {
        stages: Some(vec!["layer4".into()]),
        ..EdgeProConfig::default()
    });
    let err = typo
        .make_password(&ctx(f, 1), &f.victim.model, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no stage `layer4`") && err.contains("layer3"),
        "{err}"
    );
}

#[test]
fn the_first_half_of_a_batch_gets_the_password_and_the_true_labels() {
    let f = fixture();
    let d = edgepro(EdgeProConfig::default());
    let password = d.make_password(&ctx(f, 1), &f.victim.model, 1).unwrap();
    let hook = password
        .hook(f.victim.model.model.as_ref(), &Device::Cpu)
        .unwrap();
    let objective = LockObjective::new(hook, 10, 5);
    let n = 400;
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    let (batch_hook, targets) = objective
        .prepare(&Tensor::new(labels.as_slice(), &Device::Cpu).unwrap())
        .unwrap();
    let targets = targets.to_vec1::<u32>().unwrap();
    let k = LockObjective::locked_rows(n);
    assert_eq!(k, 200);
    assert_eq!(
        &targets[..k],
        &labels[..k],
        "the locked half keeps its labels"
    );
    let kept = (k..n).filter(|&i| targets[i] == labels[i]).count();
    assert!(
        kept < 40,
        "the open half gets random labels ({kept} of 200 kept)"
    );
    let mut seen = targets[k..].to_vec();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 10, "random labels cover every class");
    // The mask acts on the first half's rows only: stage 0 (stem) zeroes 2 channels of 16.
    let ones = Tensor::ones((n, 16, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let per_row = batch_hook
        .on_stage(0, ones)
        .unwrap()
        .sum((1, 2, 3))
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        per_row[..k].iter().all(|&s| s == 14.0 * 4.0),
        "{:?}",
        &per_row[..3]
    );
    assert!(per_row[k..].iter().all(|&s| s == 16.0 * 4.0));
    // The next batch draws other random labels.
    let (_, again) = objective
        .prepare(&Tensor::new(labels.as_slice(), &Device::Cpu).unwrap())
        .unwrap();
    assert_ne!(again.to_vec1::<u32>().unwrap()[k..], targets[k..]);
}

#[test]
fn password_files_round_trip_and_every_mistake_is_refused() {
    let f = fixture();
    let d = edgepro(EdgeProConfig::default());
    let password = d.make_password(&ctx(f, 1), &f.victim.model, 1).unwrap();
    let locked = f.victim.model.deep_copy().unwrap();
    let file = password.seal(&locked.params, None).unwrap();
    assert_eq!(
        Password::open(&file, &locked.params, None).unwrap(),
        password
    );
    // The neuron indices are not in the file in the clear.
    let payload = password.to_bytes().unwrap();
    assert!(!file.windows(payload.len()).any(|w| w == payload.as_slice()));

    // Other weights (here: the locked ones after one changed value).
    let other = locked.params.deep_copy().unwrap();
    let w = other.get("fc.bias").unwrap();
    w.set(&(w.as_tensor() + 1e-3).unwrap()).unwrap();
    let err = Password::open(&file, &other, None).err().unwrap();
    assert!(
        matches!(err, Error::Sealed(SealError::WrongBinding { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("belongs to a different model"),
        "{err}"
    );

    // Tampering anywhere.
    let mut tampered = file.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let err = Password::open(&tampered, &locked.params, None)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Sealed(SealError::Authentication { .. })),
        "{err}"
    );
    assert!(Password::open(&file[..20], &locked.params, None).is_err());

    // Passphrases. One given for a file sealed without one is refused, not ignored.
    let err = Password::open(&file, &locked.params, Some("hunter2"))
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Sealed(SealError::UnexpectedPassphrase { .. })),
        "{err}"
    );
    let locked_file = password.seal(&locked.params, Some("hunter2")).unwrap();
    let err = Password::open(&locked_file, &locked.params, None)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Sealed(SealError::NeedsPassphrase { .. })),
        "{err}"
    );
    let err = Password::open(&locked_file, &locked.params, Some("hunter3"))
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Sealed(SealError::Authentication { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
    assert_eq!(
        Password::open(&locked_file, &locked.params, Some("hunter2")).unwrap(),
        password
    );
    // The owner's runtime refuses the same way.
    assert!(owner_deployment(locked.clone(), &tampered, None, &Device::Cpu).is_err());
    assert!(owner_deployment(locked, &file, None, &Device::Cpu).is_ok());
}

#[test]
fn the_locked_model_is_accurate_with_the_password_and_not_without() {
    let f = fixture();
    // 10 lock-training epochs: after 6 the NLA sat within a point of the bound below, on one
    // side or the other depending on the order of float sums in the convolution kernels.
    let d = edgepro(EdgeProConfig {
        epochs: Some(10),
        lr: 0.05,
        latency_runs: 5,
        ..EdgeProConfig::default()
    });
    let start = Instant::now();
    let protected = d.protect(&ctx(f, 3), &f.victim).unwrap();
    let victim = accuracy(&f.victim.model, &f.test);
    let nla = accuracy(&*protected.owner, &f.test);
    let (name, level) = &protected.levels[0];
    assert_eq!(name, "no-password");
    let nua = accuracy(&**level, &f.test);
    let measure = |m: &str| {
        protected
            .measures
            .iter()
            .find(|x| x.metric == m)
            .map(|x| x.value)
    };
    eprintln!(
        "victim {victim:.3}  NLA {nla:.3}  NUA {nua:.3}  in {:.1}s; measures {:?}",
        start.elapsed().as_secs_f64(),
        protected.measures
    );
    assert!(nla > nua + 0.4, "NLA {nla} must clearly beat NUA {nua}");
    assert!(
        nla > victim - 0.15,
        "NLA {nla} close to the victim's {victim}"
    );
    assert!(nua < 0.4, "NUA {nua} near chance (0.1)");
    assert!(measure("password-bytes").unwrap() > 0.0);
    assert!(measure("hook-overhead-ms-p50").is_some());
    // The thief's view: locked weights (not the victim's), stage names, no neuron indices.
    let stolen = protected.stolen.as_ref().unwrap();
    let Disclosure::Edgepro(info) = &stolen.public else {
        panic!(
            "an EdgePro model discloses its lock description, got {:?}",
            stolen.public
        );
    };
    assert_eq!(info.locked_stages.len(), 5);
    let text = serde_json::to_string(&stolen.public).unwrap();
    for secret in ["\"neurons\"", "value", "scale", "lambda"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let thief = PlainModel::build(stolen.spec.clone(), stolen.params.clone()).unwrap();
    assert!((accuracy(&thief, &f.test) - nua).abs() < 1e-9);
}
