//! protbench defences: one file per protection, registered by id in [`register`].
//!
//! A defence turns a trained victim into what its owner deploys and what an adversary sees
//! (`harness_core::protect::Defence`). Prediction-perturbation baselines are not defences here but
//! oracle settings that compose with any defence (`none+reverse-sigmoid` in a matrix file).
#![warn(missing_docs)]

pub mod divqat;
pub mod edgepro;
mod none;
pub mod qat;
pub mod selective_encryption;

use harness_core::protect::{Defence, Registry};

/// Adds every defence of this crate to `registry`; a new defence is one file plus one line here.
pub fn register(registry: &mut Registry<dyn Defence>) {
    registry.add(none::ENTRY);
    registry.add(edgepro::ENTRY);
    registry.add(selective_encryption::ENTRY);
    registry.add(qat::ENTRY);
    registry.add(divqat::ENTRY);
}

/// A registry holding every defence of this crate.
pub fn registry() -> Registry<dyn Defence> {
    let mut r = Registry::new("defence");
    register(&mut r);
    r
}
