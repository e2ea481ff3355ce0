//! Every numeric setting of every defence is range-checked when the defence is built (which is
//! when the matrix is planned): an out-of-range value is an error naming the key. The table
//! below lists, per registered defence, each numeric key with values outside its range and
//! values at the edge of it, and the keys that are not numbers; a key of the settings struct
//! that the table forgets fails `the_table_covers_every_defence_and_every_setting`. A negative
//! value of an integer key is refused by its type (the message names the key too).

use defences::divqat::DivQatConfig;
use defences::edgepro::EdgeProConfig;
use defences::qat::QatConfig;
use defences::selective_encryption::SelectiveEncryptionConfig;
use harness_core::protect::setting_keys;
use harness_core::testkit::settings::{
    SettingsRow as Row, assert_defaults_build, assert_out_of_range_refused, assert_table_covers,
    table,
};

/// `none` takes no settings (its settings struct is private and empty).
fn no_keys() -> Option<&'static [&'static str]> {
    Some(&[])
}

const TABLE: &[Row] = &[
    Row {
        id: "none",
        keys: no_keys,
        numeric: &[],
        other: &[],
    },
    Row {
        id: "edgepro",
        keys: setting_keys::<EdgeProConfig>,
        numeric: &[
            (
                "gamma",
                &["1.0", "1.5", "-0.1", "nan", "inf"],
                &["0.0", "0.3"],
            ),
            (
                "pool_fraction",
                &["0.0", "1.5", "-0.1", "nan", "inf"],
                &["1.0"],
            ),
            (
                "locking_value",
                &["nan", "inf", "-inf"],
                &["-1.0", "0.0", "2.0"],
            ),
            ("scale", &["nan", "inf", "-inf"], &["-1.0", "0.0", "2.0"]),
            ("rank_images", &["0", "-1"], &["1"]),
            ("epochs", &["0", "-1"], &["1"]),
            ("lr", &["0.0", "-1.0", "nan", "inf"], &["1e-6"]),
            ("batch_size", &["0", "-1"], &["1"]),
            ("eval_images", &["0", "-1"], &["1"]),
            ("latency_runs", &["-1"], &["0", "1"]),
        ],
        other: &["stages", "init", "passphrase_env", "os_random_password"],
    },
    Row {
        id: "selective-encryption",
        keys: setting_keys::<SelectiveEncryptionConfig>,
        numeric: &[
            (
                "ratio",
                &["0.0", "1.5", "-0.1", "nan", "inf"],
                &["1.0", "1e-3"],
            ),
            ("levels", &["0", "33", "-1"], &["1", "32"]),
            ("pss_epochs", &["0", "-1"], &["1"]),
            ("pss_images", &["-1"], &["0", "1"]),
            ("pss_batch_size", &["0", "-1"], &["1"]),
            ("pss_lr", &["0.0", "-1.0", "nan", "inf"], &["1e-6"]),
        ],
        other: &["ranking", "layers", "os_random_key"],
    },
    Row {
        id: "qat",
        keys: setting_keys::<QatConfig>,
        numeric: &[
            ("epochs", &["0", "-1"], &["1"]),
            ("lr", &["0.0", "-1.0", "nan", "inf"], &["1e-6"]),
            ("batch_size", &["0", "-1"], &["1"]),
            ("freeze_bn_after", &["-1"], &["0"]),
            ("freeze_observers_after", &["-1"], &["0"]),
        ],
        other: &[],
    },
    Row {
        id: "divqat",
        keys: setting_keys::<DivQatConfig>,
        numeric: &[
            ("alpha", &["-0.1", "nan", "inf"], &["0.0", "2.0"]),
            ("cap", &["0.0", "-1.0", "nan", "inf"], &["1e-6"]),
            ("temperature", &["0.0", "-1.0", "nan", "inf"], &["0.5"]),
            ("epochs", &["0", "-1"], &["1"]),
            ("lr", &["0.0", "-1.0", "nan", "inf"], &["1e-6"]),
            ("batch_size", &["0", "-1"], &["1"]),
            ("freeze_bn_after", &["-1"], &["0"]),
            ("freeze_observers_after", &["-1"], &["0"]),
        ],
        other: &[],
    },
];

#[test]
fn the_table_covers_every_defence_and_every_setting() {
    assert_table_covers(&defences::registry(), TABLE);
}

#[test]
fn defaults_build() {
    assert_defaults_build(&defences::registry());
}

#[test]
fn out_of_range_values_are_refused_naming_the_key() {
    assert_out_of_range_refused(&defences::registry(), TABLE);
}

#[test]
fn pss_settings_are_checked_whatever_the_ranking() {
    let registry = defences::registry();
    let t: toml::Table =
        toml::from_str("ranking = \"l1\"\npss_lr = -1.0").expect("the test's TOML parses");
    let err = registry
        .build("selective-encryption", &t)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("`pss_lr` must be in (0, inf), got -1"),
        "{err}"
    );
}

#[test]
fn messages_give_the_range() {
    let registry = defences::registry();
    let err = |id: &str, key: &str, value: &str| {
        registry
            .build(id, &table(key, value))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = err("edgepro", "gamma", "1.5");
    assert!(e.contains("`gamma` must be in [0, 1), got 1.5"), "{e}");
    let e = err("edgepro", "epochs", "0");
    assert!(e.contains("`epochs` must be in [1, inf), got 0"), "{e}");
    let e = err("selective-encryption", "levels", "33");
    assert!(e.contains("`levels` must be in [1, 32], got 33"), "{e}");
    let e = err("selective-encryption", "ratio", "0.0");
    assert!(e.contains("`ratio` must be in (0, 1], got 0"), "{e}");
}
