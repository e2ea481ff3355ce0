//! Every numeric setting of every defence is range-checked when the defence is built (which is
//! when the matrix is planned): an out-of-range value is an error naming the key. The table
//! below lists, per registered defence, each numeric key with values outside its range and
//! values at the edge of it, and the keys that are not numbers; a key of the settings struct
//! that the table forgets fails `the_table_covers_every_defence_and_every_setting`. A negative
//! value of an integer key is refused by its type (the message names the key too).

use defences::edgepro::EdgeProConfig;
use defences::selective_encryption::SelectiveEncryptionConfig;
use harness_core::protect::setting_keys;

/// A numeric key, TOML values outside its range, and TOML values inside it (edges included).
type Numeric = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

/// One defence: its id, the keys of its settings struct, its numeric keys, its other keys.
struct Row {
    id: &'static str,
    keys: fn() -> Option<&'static [&'static str]>,
    numeric: &'static [Numeric],
    other: &'static [&'static str],
}

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
        other: &["ranking", "layers"],
    },
];

fn table(key: &str, value: &str) -> toml::Table {
    toml::from_str(&format!("{key} = {value}")).expect("the test's TOML parses")
}

#[test]
fn the_table_covers_every_defence_and_every_setting() {
    let registry = defences::registry();
    let ids: Vec<&str> = registry.ids().collect();
    let listed: Vec<&str> = TABLE.iter().map(|r| r.id).collect();
    assert_eq!(
        ids, listed,
        "one row per registered defence, in registration order"
    );
    for row in TABLE {
        let mut keys: Vec<&str> = (row.keys)().expect("a settings struct").to_vec();
        let mut covered: Vec<&str> = row.numeric.iter().map(|n| n.0).collect();
        covered.extend(row.other);
        keys.sort_unstable();
        covered.sort_unstable();
        assert_eq!(keys, covered, "{}: numeric and other keys", row.id);
    }
}

#[test]
fn defaults_build() {
    let registry = defences::registry();
    for id in registry.ids() {
        if let Err(e) = registry.build(id, &toml::Table::new()) {
            panic!("{id} with its defaults: {e}");
        }
    }
}

#[test]
fn out_of_range_values_are_refused_naming_the_key() {
    let registry = defences::registry();
    for row in TABLE {
        for &(key, bad, good) in row.numeric {
            assert!(
                !bad.is_empty(),
                "{}: `{key}` has no out-of-range value",
                row.id
            );
            for value in bad {
                let err = match registry.build(row.id, &table(key, value)) {
                    Ok(_) => panic!("{}: `{key} = {value}` was accepted", row.id),
                    Err(e) => e.to_string(),
                };
                assert!(
                    err.contains(&format!("`{key}`")),
                    "{}: `{key} = {value}`: {err}",
                    row.id
                );
            }
            for value in good {
                if let Err(e) = registry.build(row.id, &table(key, value)) {
                    panic!("{}: `{key} = {value}` was refused: {e}", row.id);
                }
            }
        }
    }
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
