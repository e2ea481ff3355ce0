//! The checks behind each component crate's `tests/settings.rs`: a table lists, per registered
//! component, each numeric key with values outside its range and values at its edges, and the
//! keys that are not numbers. The checks are the same for defences and attacks, so they live
//! here once and run on any [`Registry`].

use crate::protect::Registry;

/// A numeric key, TOML values outside its range, and TOML values inside it (edges included).
pub type Numeric = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

/// One component: its id, the keys of its settings struct, its numeric keys, its other keys.
pub struct SettingsRow {
    /// Registry id.
    pub id: &'static str,
    /// The settings struct's keys (`harness_core::protect::setting_keys::<Config>`).
    pub keys: fn() -> Option<&'static [&'static str]>,
    /// Its numeric keys with out-of-range and in-range values.
    pub numeric: &'static [Numeric],
    /// Its keys that are not numbers.
    pub other: &'static [&'static str],
}

/// `key = value` as a settings table.
pub fn table(key: &str, value: &str) -> toml::Table {
    toml::from_str(&format!("{key} = {value}")).expect("the test's TOML parses")
}

/// The table has one row per registered component, in registration order, and each row names
/// every key of its settings struct, numeric or other.
pub fn assert_table_covers<T: ?Sized>(registry: &Registry<T>, rows: &[SettingsRow]) {
    let ids: Vec<&str> = registry.ids().collect();
    let listed: Vec<&str> = rows.iter().map(|r| r.id).collect();
    assert_eq!(
        ids, listed,
        "one row per registered component, in registration order"
    );
    for row in rows {
        let mut keys: Vec<&str> = (row.keys)().expect("a settings struct").to_vec();
        let mut covered: Vec<&str> = row.numeric.iter().map(|n| n.0).collect();
        covered.extend(row.other);
        keys.sort_unstable();
        covered.sort_unstable();
        assert_eq!(keys, covered, "{}: numeric and other keys", row.id);
    }
}

/// Every registered component builds with its default settings.
pub fn assert_defaults_build<T: ?Sized>(registry: &Registry<T>) {
    for id in registry.ids() {
        if let Err(e) = registry.build(id, &toml::Table::new()) {
            panic!("{id} with its defaults: {e}");
        }
    }
}

/// Every out-of-range value is refused with a message naming its key; every in-range value is
/// accepted.
pub fn assert_out_of_range_refused<T: ?Sized>(registry: &Registry<T>, rows: &[SettingsRow]) {
    for row in rows {
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
