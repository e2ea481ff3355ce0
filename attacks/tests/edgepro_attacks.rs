//! The adaptive attacks on EdgePro against a small locked model: ResNet-20 trained for a few
//! epochs on 8x8 synthetic images (owner half), locked with EdgePro, attacked with the other half.
#![expect(
    clippy::unwrap_used,
    reason = "test fixtures and helpers unwrap: a failure there is a failed test"
)]

use std::sync::OnceLock;

use attacks::edgepro_guess::{EdgeProGuess, EdgeProGuessConfig};
use attacks::edgepro_prune::{EdgeProPrune, EdgeProPruneConfig};
use candle_core::Device;
use datasets::ImageSet;
use defences::edgepro::{EdgePro, EdgeProConfig};
use harness_core::protect::{
    Attack, AttackContext, Budget, Defence, DefenceContext, Deployed, Exposure, Protected,
    StolenArtifact, Victim,
};

use harness_core::testkit::{self, NORM};

struct Fixture {
    victim: Victim,
    protected: Protected,
    attacker: ImageSet,
    test: ImageSet,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let data = testkit::synthetic_data().unwrap();
        let victim = testkit::train_victim(&data.owner).unwrap();
        let (owner, attacker, test) = (data.owner, data.attacker, data.test);
        let defence = EdgePro::new(EdgeProConfig {
            epochs: Some(6),
            lr: 0.05,
            latency_runs: 0,
            ..EdgeProConfig::default()
        })
        .unwrap();
        let ctx = DefenceContext {
            device: &Device::Cpu,
            owner_data: &owner,
            normalization: NORM,
            seed: 3,
            progress: false,
        };
        let protected = defence.protect(&ctx, &victim).unwrap();
        Fixture {
            victim,
            protected,
            attacker,
            test,
        }
    })
}

fn ctx(f: &Fixture) -> AttackContext<'_> {
    AttackContext {
        device: &Device::Cpu,
        attacker_data: &f.attacker,
        transfer_data: &f.attacker,
        normalization: NORM,
        train: f.victim.train.clone(),
        seed: 7,
        progress: false,
    }
}

fn exposure(f: &Fixture) -> Exposure {
    Exposure {
        stolen: f.protected.stolen.clone(),
        oracle: None,
    }
}

fn accuracy(model: &dyn Deployed, set: &ImageSet) -> f64 {
    let idx: Vec<usize> = (0..set.len()).collect();
    let xs = datasets::batch::to_tensor(set, &idx, Some(&NORM), &Device::Cpu).unwrap();
    let pred = model.logits(&xs).unwrap().argmax(1).unwrap();
    let pred = pred.to_vec1::<u32>().unwrap();
    pred.iter().zip(&set.labels).filter(|(p, l)| p == l).count() as f64 / set.len() as f64
}

fn measure(ms: &[harness_core::protect::Measure], name: &str) -> f64 {
    ms.iter().find(|m| m.metric == name).unwrap().value
}

#[test]
fn guessing_tries_every_kind_of_guess_and_keeps_the_best() {
    let f = fixture();
    let attack = EdgeProGuess::new(EdgeProGuessConfig {
        tries: 4,
        roulette_tries: 3,
        eval_images: 200,
        ..EdgeProGuessConfig::default()
    })
    .unwrap();
    assert_eq!(
        attack.targets(),
        Some(harness_core::protect::DisclosureKind::Edgepro)
    );
    let (model, ms) = attack.steal(&ctx(f), &exposure(f)).unwrap();
    assert_eq!(measure(&ms, "guesses"), 8.0);
    let best = measure(&ms, "best-guess-accuracy-attacker-data");
    for kind in [
        "top-activation-guess-accuracy-attacker-data",
        "best-random-guess-accuracy-attacker-data",
        "best-roulette-guess-accuracy-attacker-data",
    ] {
        assert!(measure(&ms, kind) <= best, "{kind}");
    }
    // The model is the stolen weights with a hook on the five locked stages: the ends of the
    // stage groups stem, layer1..3 and pool.
    let locked: Vec<usize> = ["stem", "layer1", "layer2", "layer3", "pool"]
        .iter()
        .map(|g| model.plain.model.find_stage(g).unwrap())
        .collect();
    assert_eq!(model.hook.masked_stages(), locked);
    assert_eq!(locked, vec![0, 3, 6, 9, 10]);
    let nla = accuracy(&*f.protected.owner, &f.test);
    let nua = accuracy(&*f.protected.levels[0].1, &f.test);
    let guessed = accuracy(&model, &f.test);
    eprintln!("NLA {nla:.3}  NUA {nua:.3}  best guess {guessed:.3}  measures {ms:?}");
    // Weights without an EdgePro description are refused with a clear message.
    let plain = Exposure {
        stolen: Some(StolenArtifact::plain(
            f.victim.model.spec.clone(),
            f.victim.model.params.clone(),
        )),
        oracle: None,
    };
    let err = attack.steal(&ctx(f), &plain).err().unwrap().to_string();
    assert!(err.contains("needs an EdgePro-locked model"), "{err}");
}

#[test]
fn pruning_zeroes_the_most_active_neurons_of_each_locked_stage_and_fine_tunes() {
    let f = fixture();
    let attack = EdgeProPrune::new(EdgeProPruneConfig::default()).unwrap();
    assert_eq!(
        attack.targets(),
        Some(harness_core::protect::DisclosureKind::Edgepro)
    );
    let budget = Budget {
        epochs: 2,
        queries: None,
    };
    let (model, ms) = attack.steal(&ctx(f), &exposure(f), &budget).unwrap();
    // round(0.3 x c) of 16, 16, 32, 64, 64 channels.
    assert_eq!(
        measure(&ms, "pruned-neurons"),
        (5 + 5 + 10 + 19 + 19) as f64
    );
    let stolen = f.protected.stolen.as_ref().unwrap();
    let changed = stolen
        .params
        .get("conv1.weight")
        .unwrap()
        .as_tensor()
        .sub(model.plain.params.get("conv1.weight").unwrap().as_tensor())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(changed > 0.0, "fine-tuning moved the weights");
    let nua = accuracy(&*f.protected.levels[0].1, &f.test);
    let pruned = accuracy(&model, &f.test);
    eprintln!("NUA {nua:.3}  pruned + fine-tuned {pruned:.3}");
}
