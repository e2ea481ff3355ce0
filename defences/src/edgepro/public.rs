//! What a thief learns about an EdgePro deployment without the password: the deployed runtime
//! must know which stages carry a lock hook, and the method and its public parameters are in the
//! paper. Adaptive attacks read this from [`harness_core::protect::StolenWeights::public`]; the
//! authorised neurons, their locking values and the scale never appear here.

use harness_core::{Error, Result};

/// One locked stage as seen from outside.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PublicStage {
    /// Stage name.
    pub name: String,
    /// Its channels (public: the architecture).
    pub channels: usize,
    /// How many of them are authorised (public: `floor(gamma x channels) + 1`).
    pub locked_neurons: usize,
}

/// The public description of a locked model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicInfo {
    /// Always `edgepro`.
    pub defence: String,
    /// The locked stages, in stage order.
    pub locked_stages: Vec<PublicStage>,
    /// Fraction of each stage's neurons authorised (the method's parameter).
    pub gamma: f64,
    /// Fraction of top-ranked neurons the authorised ones are drawn from.
    pub pool_fraction: f64,
}

impl PublicInfo {
    /// As stored in `StolenWeights::public`.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| Error::Config(format!("edgepro public info: {e}")))
    }

    /// Reads it back; an error names what is missing (e.g. weights from another defence).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let info: Self = serde_json::from_value(value.clone()).map_err(|e| {
            Error::Config(format!(
                "the stolen weights carry no EdgePro description ({e}); is the defence `edgepro`?"
            ))
        })?;
        if info.defence != "edgepro" {
            return Err(Error::Config(format!(
                "the stolen weights were protected by `{}`, not `edgepro`",
                info.defence
            )));
        }
        Ok(info)
    }
}
