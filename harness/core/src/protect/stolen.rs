//! What an adversary gets from a protected model, and what an attack needs of it.
//!
//! A thief takes a [`StolenArtifact`]: the architecture, the weights as deployed, which parts of
//! the model they are (all stages, or some of them when a model is split over hosts), in which
//! precision, and the protection's typed public description ([`Disclosure`]). Attacks declare a
//! [`Requirement`]; the planner rejects impossible defence x attack pairs (by the defence's
//! [`super::Capabilities`]) before any training starts, instead of an attack failing at run time.

use super::{Disclosure, Oracle, PlainModel};
use crate::zoo::Precision;
use crate::zoo::partial::{Missing, PartialModel, build_partial};
use crate::{Error, ModelSpec, ParamStore, Result};

/// Which parts of a model a thief holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parts {
    /// Every stage (a model file taken from a device or server).
    Whole,
    /// Only these stages (indices into the model's stages, ascending): one host of a split
    /// deployment.
    Stages(Vec<usize>),
}

/// Weights as a thief finds them on a device or server: for an unprotected model the real ones,
/// for an encrypted or locked model the protected ones, without any secret.
#[derive(Clone)]
pub struct StolenArtifact {
    /// The architecture, exit heads and precision (public: they are in the deployed file).
    pub spec: ModelSpec,
    /// The weights as stolen (for [`Parts::Stages`], those of the held stages only).
    pub params: ParamStore,
    /// Which stages the weights are.
    pub parts: Parts,
    /// What else the deployed files and the published method reveal without any secret.
    /// Adaptive attacks read it; generic attacks ignore it.
    pub public: Disclosure,
}

impl StolenArtifact {
    /// A whole model with nothing revealed beyond its weights.
    pub fn plain(spec: ModelSpec, params: ParamStore) -> Self {
        Self::whole(spec, params, Disclosure::Nothing)
    }

    /// A whole model with its protection's public description.
    pub fn whole(spec: ModelSpec, params: ParamStore, public: Disclosure) -> Self {
        Self {
            spec,
            params,
            parts: Parts::Whole,
            public,
        }
    }

    /// The numbers the weights are stored in.
    pub fn precision(&self) -> Precision {
        self.spec.precision
    }

    /// Whether the thief holds every stage.
    pub fn is_whole(&self) -> bool {
        self.parts == Parts::Whole
    }

    /// The attacker's own working copy of a whole stolen model: independent variables (the
    /// attack may train or prune them without touching the deployment), built on the stolen
    /// architecture. Every white-box attack starts here.
    pub fn rebuild(&self) -> Result<PlainModel> {
        if let Parts::Stages(held) = &self.parts {
            return Err(Error::Unsupported(format!(
                "the stolen `{}` holds stages {held:?} only; this attack needs the whole model",
                self.spec.arch
            )));
        }
        PlainModel::build(self.spec.clone(), self.params.deep_copy()?)
    }

    /// The attacker's copy of the stolen stages, with `missing` saying what the stages it does
    /// not hold do (fail, or start from fresh seeded weights). A whole model holds every stage.
    pub fn rebuild_parts(&self, missing: Missing) -> Result<PartialModel> {
        let params = self.params.deep_copy()?;
        match &self.parts {
            Parts::Stages(held) => build_partial(&self.spec, &params, held, missing),
            Parts::Whole => {
                let n = crate::zoo::build(&self.spec, &ParamStore::new(0, params.device()))?
                    .stages()
                    .len();
                build_partial(&self.spec, &params, &(0..n).collect::<Vec<_>>(), missing)
            }
        }
    }
}

/// The adversary's view of a protected model.
#[derive(Clone, Default)]
pub struct Exposure {
    /// White-box: the deployed weights (all or some stages), when the threat model lets a thief
    /// take them.
    pub stolen: Option<StolenArtifact>,
    /// Black-box: the owner's prediction API.
    pub oracle: Option<Oracle>,
}

/// What a thief can take under a protection's threat model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Theft {
    /// Nothing: the weights stay out of reach (a cloud-only API).
    Nothing,
    /// The whole deployed model.
    Whole,
    /// Some stages only (one host of a split deployment).
    Parts,
}

/// What an attack needs from an [`Exposure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Requirement {
    /// The whole stolen model (fine-tuning, pruning, adversarial training, adaptive attacks).
    Weights,
    /// Stolen weights of at least some stages (attacks that retrain what they lack).
    Parts,
    /// A query oracle (extraction).
    Oracle,
    /// Nothing (the no-theft reference trained on the attacker's own data).
    Nothing,
}

impl Requirement {
    /// Whether a protection letting a thief take `theft` can give an attack with this need
    /// what it needs (the oracle is always there).
    pub fn met_by(self, theft: Theft) -> bool {
        match self {
            Self::Weights => theft == Theft::Whole,
            Self::Parts => theft != Theft::Nothing,
            Self::Oracle | Self::Nothing => true,
        }
    }
}

impl Exposure {
    /// Whether this exposure gives the attack what it needs.
    pub fn satisfies(&self, need: Requirement) -> bool {
        match need {
            Requirement::Weights => self.stolen.as_ref().is_some_and(StolenArtifact::is_whole),
            Requirement::Parts => self.stolen.is_some(),
            Requirement::Oracle => self.oracle.is_some(),
            Requirement::Nothing => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;
    use candle_core::Device;

    #[test]
    fn requirements_match_what_a_thief_can_take() {
        assert!(Requirement::Weights.met_by(Theft::Whole));
        assert!(!Requirement::Weights.met_by(Theft::Parts));
        assert!(!Requirement::Weights.met_by(Theft::Nothing));
        assert!(Requirement::Parts.met_by(Theft::Parts));
        assert!(Requirement::Parts.met_by(Theft::Whole));
        assert!(!Requirement::Parts.met_by(Theft::Nothing));
        assert!(Requirement::Oracle.met_by(Theft::Nothing));
    }

    #[test]
    fn a_partial_theft_rebuilds_its_stages_only() -> Result<()> {
        let spec = ModelSpec::new(Arch::VggSmall, 10);
        let full = ParamStore::new(1, &Device::Cpu);
        let model = crate::zoo::build(&spec, &full)?;
        let first: Vec<String> = model.stages()[0].params.clone();
        // The first stage's tensors only, copied through a builder (the store's own API).
        let part = ParamStore::new(1, &Device::Cpu);
        let vb = part.var_builder();
        for name in &first {
            let Some(var) = full.get(name) else {
                return Err(Error::Config(format!("no {name}")));
            };
            let init = candle_nn::Init::Const(0.0);
            vb.get_with_hints_dtype(var.dims(), name, init, var.dtype())?;
            if let Some(new) = part.get(name) {
                new.set(var.as_tensor())?;
            }
        }
        let whole = StolenArtifact::plain(spec.clone(), full);
        assert!(whole.rebuild().is_ok());
        assert!(whole.rebuild_parts(Missing::Error)?.holds(1));
        let stolen = StolenArtifact {
            parts: Parts::Stages(vec![0]),
            ..StolenArtifact::plain(spec, part)
        };
        let exposure = Exposure {
            stolen: Some(stolen.clone()),
            oracle: None,
        };
        assert!(exposure.satisfies(Requirement::Parts));
        assert!(!exposure.satisfies(Requirement::Weights));
        let err = stolen
            .rebuild()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("needs the whole model"), "{err}");
        let partial = stolen.rebuild_parts(Missing::Error)?;
        assert!(partial.holds(0) && !partial.holds(1));
        Ok(())
    }
}
