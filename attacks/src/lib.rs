//! protbench attacks: one file per attack, registered by id in [`register`].
//!
//! An attack receives what a protection exposes (stolen weights, a query oracle, or nothing) and
//! a budget, and returns the attacker's model (`harness_core::protect::Attack`). Every attack
//! trains with the harness's loop (`harness_core::train::train`) starting from the victim's
//! recipe, derives its randomness from the cell's seed, and reads only the attacker's data, the
//! transfer set and the exposure: never the owner's data or the test set.
#![warn(missing_docs)]

mod common;

pub mod adv_train;
pub mod edgepro_guess;
pub mod edgepro_prune;
pub mod extraction;
pub mod fine_tune;
pub mod objectives;
pub mod prune;
pub mod reinit_encrypted;
pub mod scratch;

use std::sync::Arc;

use harness_core::protect::{Attack, Measure, PlainModel, Registry, Stolen};

/// An attack's result with the weights in reach: [`Stolen`] holds the model as a
/// `dyn Deployed`, which hides them. Each attack's `steal` returns this, for tests and for
/// attacks that build on others; `Attack::run` hands it over as a [`Stolen`].
pub struct StolenModel {
    /// The attacker's model.
    pub model: PlainModel,
    /// Attack-specific measures.
    pub measures: Vec<Measure>,
}

impl From<StolenModel> for Stolen {
    fn from(s: StolenModel) -> Self {
        Stolen {
            model: Arc::new(s.model),
            measures: s.measures,
        }
    }
}

/// Adds every attack of this crate to `registry`; a new attack is one file plus one line here.
pub fn register(registry: &mut Registry<dyn Attack>) {
    registry.add(extraction::ENTRY);
    registry.add(fine_tune::ENTRY);
    registry.add(prune::ENTRY);
    registry.add(adv_train::ENTRY);
    registry.add(reinit_encrypted::ENTRY);
    registry.add(scratch::ENTRY);
    registry.add(edgepro_guess::ENTRY);
    registry.add(edgepro_prune::ENTRY);
}

/// A registry holding every attack of this crate.
pub fn registry() -> Registry<dyn Attack> {
    let mut r = Registry::new("attack");
    register(&mut r);
    r
}
