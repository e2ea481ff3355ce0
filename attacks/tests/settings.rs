//! Every numeric setting of every attack is range-checked when the attack is built (which is
//! when the matrix is planned): an out-of-range value is an error naming the key. The table
//! below lists, per registered attack, each numeric key with values outside its range and
//! values at the edge of it, and the keys that are not numbers; a key of the settings struct
//! that the table forgets fails `the_table_covers_every_setting`.

use attacks::adv_train::AdvTrainConfig;
use attacks::edgepro_guess::EdgeProGuessConfig;
use attacks::edgepro_prune::EdgeProPruneConfig;
use attacks::extraction::ExtractionConfig;
use attacks::fine_tune::FineTuneConfig;
use attacks::prune::PruneConfig;
use attacks::reinit_encrypted::ReinitConfig;
use attacks::scratch::ScratchConfig;
use harness_core::protect::setting_keys;
use harness_core::testkit::settings::{
    SettingsRow as Row, assert_defaults_build, assert_out_of_range_refused, assert_table_covers,
    table,
};

const NON_FINITE: &[&str] = &["nan", "inf", "-inf"];

const TABLE: &[Row] = &[
    Row {
        id: "extraction",
        keys: setting_keys::<ExtractionConfig>,
        numeric: &[
            ("width", &["0.0", "-1.0", "nan", "inf"], &["1.0"]),
            ("query_batch", &["0", "-1"], &["1"]),
            ("lr", &["0.0", "-0.1", "nan", "inf"], &["1e-6"]),
        ],
        other: &["substitute", "labels"],
    },
    Row {
        id: "fine-tune",
        keys: setting_keys::<FineTuneConfig>,
        numeric: &[("lr", &["0.0", "-1.0", "nan", "inf"], &["1e-6", "1.0"])],
        other: &["variant"],
    },
    Row {
        id: "prune",
        keys: setting_keys::<PruneConfig>,
        numeric: &[
            ("rate", &["1.0", "-0.1", "nan", "inf"], &["0.0", "0.99"]),
            ("lr", &["0.0", "-1.0", "nan", "inf"], &["1e-6"]),
        ],
        other: &["fine_tune"],
    },
    Row {
        id: "adv-train",
        keys: setting_keys::<AdvTrainConfig>,
        numeric: &[
            (
                "eps_255",
                &["0.0", "-1.0", "255.5", "nan", "inf"],
                &["255.0", "0.5"],
            ),
            (
                "step_255",
                &["0.0", "-1.0", "256", "nan", "inf"],
                &["255", "0.5"],
            ),
            ("steps", &["0", "-1"], &["1"]),
            ("lr", &["0.0", "-0.5", "nan", "inf"], &["1e-6"]),
            ("robust_eval_images", &["-1"], &["0", "1"]),
        ],
        other: &["random_start"],
    },
    Row {
        id: "reinit-encrypted",
        keys: setting_keys::<ReinitConfig>,
        numeric: &[
            (
                "fraction",
                &["0.0", "-0.5", "1.5", "nan", "inf"],
                &["1.0", "1e-6"],
            ),
            ("lr", &["0.0", "-1.0", "nan", "inf"], &["1e-6"]),
        ],
        other: &["mode"],
    },
    Row {
        id: "scratch",
        keys: setting_keys::<ScratchConfig>,
        numeric: &[("width", &["0.0", "-1.0", "nan", "inf"], &["1.0"])],
        other: &["arch"],
    },
    Row {
        id: "edgepro-guess",
        keys: setting_keys::<EdgeProGuessConfig>,
        numeric: &[
            ("tries", &["-1"], &["0", "1"]),
            ("roulette_tries", &["-1"], &["0", "1"]),
            ("eval_images", &["0", "-1"], &["1"]),
            ("rank_images", &["0", "-1"], &["1"]),
            ("locking_value", NON_FINITE, &["-1.0", "0.0", "2.5"]),
        ],
        other: &[],
    },
    Row {
        id: "edgepro-prune",
        keys: setting_keys::<EdgeProPruneConfig>,
        numeric: &[
            (
                "rate",
                &["0.0", "1.0", "-0.1", "nan", "inf"],
                &["0.01", "0.99"],
            ),
            ("lr", &["0.0", "-1.0", "nan", "inf"], &["1e-6"]),
            ("rank_images", &["0", "-1"], &["1"]),
        ],
        other: &["fine_tune"],
    },
];

#[test]
fn the_table_covers_every_attack_and_every_setting() {
    assert_table_covers(&attacks::registry(), TABLE);
}

#[test]
fn defaults_build() {
    assert_defaults_build(&attacks::registry());
}

#[test]
fn out_of_range_values_are_refused_naming_the_key() {
    assert_out_of_range_refused(&attacks::registry(), TABLE);
}

#[test]
fn messages_give_the_range() {
    let registry = attacks::registry();
    let err = |id: &str, key: &str, value: &str| {
        registry
            .build(id, &table(key, value))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = err("fine-tune", "lr", "0.0");
    assert!(e.contains("`lr` must be in (0, inf), got 0"), "{e}");
    let e = err("prune", "rate", "1.0");
    assert!(e.contains("`rate` must be in [0, 1), got 1"), "{e}");
    let e = err("adv-train", "steps", "0");
    assert!(e.contains("`steps` must be in [1, inf), got 0"), "{e}");
    let e = err("reinit-encrypted", "fraction", "nan");
    assert!(e.contains("`fraction` must be in (0, 1], got NaN"), "{e}");
}
