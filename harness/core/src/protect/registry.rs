//! Components by id. A registry entry builds a component from its settings table (TOML), so the
//! engine never names a concrete type and an unknown id answers "did you mean".

use crate::{Error, Result};

/// Builds a component from its settings (the matrix file's `[defences.<id>]` or
/// `[attacks.<id>]` table; empty when absent). Unknown settings must be rejected.
pub type Factory<T> = fn(&toml::Table) -> Result<Box<T>>;

/// One registered component: each component's file declares its entry as a constant (its id,
/// the only place the id is written, its summary and its constructor), and the crate's
/// `register` adds it with one line.
pub struct RegistryEntry<T: ?Sized> {
    /// Stable kebab-case id.
    pub id: &'static str,
    /// One line for `harness list`.
    pub summary: &'static str,
    /// The constructor.
    pub build: Factory<T>,
}

/// Components of one kind (defences or attacks).
pub struct Registry<T: ?Sized> {
    kind: &'static str,
    entries: Vec<RegistryEntry<T>>,
}

impl<T: ?Sized> Registry<T> {
    /// An empty registry; `kind` names the components in messages ("defence", "attack").
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            entries: Vec::new(),
        }
    }

    /// Registers a component; a duplicate id is a programming error caught by tests.
    pub fn add(&mut self, entry: RegistryEntry<T>) -> &mut Self {
        debug_assert!(
            self.entries.iter().all(|e| e.id != entry.id),
            "duplicate {} id {}",
            self.kind,
            entry.id
        );
        self.entries.push(entry);
        self
    }

    /// The entry for `id`, or a usage error listing the closest ids and all of them.
    pub fn get(&self, id: &str) -> Result<&RegistryEntry<T>> {
        self.entries.iter().find(|e| e.id == id).ok_or_else(|| {
            let ids: Vec<&str> = self.ids().collect();
            let suggestions = crate::error::suggest(id, ids.iter().copied());
            Error::Config(format!(
                "unknown {} `{id}`{}; available: {}",
                self.kind,
                datasets::names::did_you_mean(&suggestions),
                ids.join(", ")
            ))
        })
    }

    /// Builds `id` from its settings.
    pub fn build(&self, id: &str, settings: &toml::Table) -> Result<Box<T>> {
        (self.get(id)?.build)(settings).map_err(|e| {
            // One "invalid configuration" prefix is enough.
            let why = match e {
                Error::Config(m) => m,
                other => other.to_string(),
            };
            Error::Config(format!("settings of {} `{id}`: {why}", self.kind))
        })
    }

    /// Every id, in registration order.
    pub fn ids(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().map(|e| e.id)
    }

    /// Every entry, in registration order.
    pub fn entries(&self) -> &[RegistryEntry<T>] {
        &self.entries
    }
}

/// Parses a component's settings table into its config struct (which should derive
/// `Deserialize` with `deny_unknown_fields` and `default`), naming the bad key on error.
pub fn settings<C: serde::de::DeserializeOwned>(table: &toml::Table) -> Result<C> {
    toml::Table::try_into(table.clone()).map_err(|e| Error::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Thing {
        fn n(&self) -> u32;
    }
    struct One(u32);
    impl Thing for One {
        fn n(&self) -> u32 {
            self.0
        }
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        n: u32,
    }
    impl Default for Cfg {
        fn default() -> Self {
            Self { n: 1 }
        }
    }

    fn build_one(t: &toml::Table) -> Result<Box<dyn Thing>> {
        let c: Cfg = settings(t)?;
        Ok(Box::new(One(c.n)))
    }

    #[test]
    fn builds_by_id_with_settings_and_suggests_on_typos() {
        let mut r: Registry<dyn Thing> = Registry::new("widget");
        r.add(RegistryEntry {
            id: "fine-tune",
            summary: "",
            build: build_one,
        });
        assert_eq!(r.build("fine-tune", &toml::Table::new()).unwrap().n(), 1);
        let t: toml::Table = toml::from_str("n = 7").unwrap();
        assert_eq!(r.build("fine-tune", &t).unwrap().n(), 7);
        let bad: toml::Table = toml::from_str("m = 7").unwrap();
        let err = r.build("fine-tune", &bad).err().unwrap().to_string();
        assert!(err.contains("unknown field `m`"), "{err}");
        let err = r.get("finetune").err().unwrap().to_string();
        assert!(err.contains("did you mean `fine-tune`"), "{err}");
    }
}
