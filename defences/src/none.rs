//! `none`: no protection. The owner deploys the victim as trained and a thief who takes the
//! weights gets them as they are; every other defence is read against this row.

use harness_core::Result;
use harness_core::protect::{Defence, DefenceContext, Protected, RegistryEntry, Victim, settings};

/// `none` takes no settings.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoneConfig {}

/// The unprotected baseline.
pub struct NoDefence;

/// The registry entry of `none`: its id (declared here only), summary and constructor.
pub const ENTRY: RegistryEntry<dyn Defence> = RegistryEntry {
    id: "none",
    summary: "the unprotected victim (baseline)",
    build,
};

/// Builds [`NoDefence`]; any setting is an error (there are none).
pub fn build(table: &toml::Table) -> Result<Box<dyn Defence>> {
    let _: NoneConfig = settings(table)?;
    Ok(Box::new(NoDefence))
}

impl Defence for NoDefence {
    fn protect(&self, _ctx: &DefenceContext<'_>, victim: &Victim) -> Result<Protected> {
        Ok(Protected::unprotected(victim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_no_settings() {
        assert!(build(&toml::Table::new()).is_ok());
        let t: toml::Table = toml::from_str("beta = 1.0").unwrap();
        let err = build(&t).err().unwrap().to_string();
        assert!(err.contains("unknown field `beta`"), "{err}");
    }

    #[test]
    fn registry_knows_none() {
        let r = crate::registry();
        assert!(r.ids().any(|id| id == "none"));
        assert!(
            r.get("nne")
                .err()
                .unwrap()
                .to_string()
                .contains("did you mean `none`")
        );
    }
}
