//! What a protected model reveals without any secret, one typed description per protection.
//!
//! A thief who takes a protected model also learns what the deployed files and the published
//! method say: which layers carry encrypted kernels, which stages run a lock hook and how many
//! neurons it authorises. Adaptive attacks read exactly this and nothing more. The descriptions
//! live in the core (not in the defence that writes them) because they are the contract between
//! a protection and the attacks on it: attacks never import a defence's code.
//!
//! A new protection whose public information an adaptive attack reads adds one variant here;
//! one that reveals nothing beyond its weights uses [`Disclosure::Nothing`].

use serde::{Deserialize, Serialize};

/// The public description that comes with stolen weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "protection", rename_all = "kebab-case")]
pub enum Disclosure {
    /// Nothing beyond the weights and the architecture.
    #[default]
    Nothing,
    /// Selective parameter encryption's public file header.
    SelectiveEncryption(EncryptionDisclosure),
    /// EdgePro's public runtime description.
    Edgepro(LockDisclosure),
}

/// The kind of a [`Disclosure`], without its contents: what a defence declares it publishes and
/// what an adaptive attack targets, so the planner pairs them before anything trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisclosureKind {
    /// [`Disclosure::Nothing`].
    Nothing,
    /// [`Disclosure::SelectiveEncryption`].
    SelectiveEncryption,
    /// [`Disclosure::Edgepro`].
    Edgepro,
}

impl DisclosureKind {
    /// Kebab-case name, as in messages and records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nothing => "nothing",
            Self::SelectiveEncryption => "selective-encryption",
            Self::Edgepro => "edgepro",
        }
    }
}

impl std::fmt::Display for DisclosureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Disclosure {
    /// Which kind of description this is.
    pub fn kind(&self) -> DisclosureKind {
        match self {
            Self::Nothing => DisclosureKind::Nothing,
            Self::SelectiveEncryption(_) => DisclosureKind::SelectiveEncryption,
            Self::Edgepro(_) => DisclosureKind::Edgepro,
        }
    }
}

/// The public header of a selectively encrypted model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionDisclosure {
    /// The encryption ratio (fraction of kernels encrypted per layer).
    pub ratio: f64,
    /// Access levels below full.
    pub levels: usize,
    /// The kernel ranking used to choose what to encrypt (`pss`, `l1`, ...).
    pub ranking: String,
    /// The layers that hold encrypted kernels, in file order.
    pub layers: Vec<EncryptedLayer>,
}

/// One layer holding encrypted kernels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedLayer {
    /// Tensor name (`layer1.0.conv1.weight`).
    pub name: String,
    /// Kernels in the layer (out x in).
    pub kernels: usize,
    /// Positions per kernel (k x k).
    pub kernel_len: usize,
}

/// What a thief learns about an EdgePro deployment without the password: the runtime must know
/// which stages carry a lock hook, and the method's public parameters are in the paper. The
/// authorised neurons, their locking values and the scale never appear here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockDisclosure {
    /// The locked stages, in stage order.
    pub locked_stages: Vec<LockedStage>,
    /// Fraction of each stage's neurons authorised (the method's parameter).
    pub gamma: f64,
    /// Fraction of top-ranked neurons the authorised ones are drawn from.
    pub pool_fraction: f64,
}

/// One locked stage as seen from outside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedStage {
    /// Stage name (a stage or group name of the zoo model, see `Model::find_stage`).
    pub name: String,
    /// Its channels (public: the architecture).
    pub channels: usize,
    /// How many of them are authorised (public: the method's rule applied to `gamma`).
    pub locked_neurons: usize,
    /// How many top-ranked neurons the authorised ones are drawn from (public: the method's
    /// rule applied to `pool_fraction`).
    pub pool: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip_with_their_kind_as_tag() {
        let d = Disclosure::Edgepro(LockDisclosure {
            locked_stages: vec![LockedStage {
                name: "layer1".into(),
                channels: 16,
                locked_neurons: 2,
                pool: 5,
            }],
            gamma: 0.1,
            pool_fraction: 0.3,
        });
        let json = serde_json::to_value(&d).expect("serialises");
        assert_eq!(json["protection"], "edgepro");
        let back: Disclosure = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, d);
        assert_eq!(back.kind(), DisclosureKind::Edgepro);
        assert_eq!(Disclosure::default().kind(), DisclosureKind::Nothing);
        assert_eq!(
            DisclosureKind::SelectiveEncryption.to_string(),
            "selective-encryption"
        );
    }
}
