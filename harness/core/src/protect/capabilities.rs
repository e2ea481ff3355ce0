//! What a defence declares about itself, once: what a thief can take, which public description
//! comes with it, and whether the owner gets an ownership verifier. The planner reads the
//! declaration to pair defences with attacks before anything trains; after `protect` the runner
//! checks that what came back agrees with it, so a declaration cannot silently drift from the
//! implementation.

use super::{DisclosureKind, Protected, Theft};
use crate::{Error, Result};

/// A defence's declared capabilities (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// What a thief of the deployed files gets.
    pub theft: Theft,
    /// The kind of public description that comes with stolen weights ([`DisclosureKind::Nothing`]
    /// when there are none to steal).
    pub disclosure: DisclosureKind,
    /// Whether [`Protected::verifier`] is set: the planner then adds cells that put
    /// independently trained models to the verifier, which give its false-positive rate.
    pub verifies_ownership: bool,
    /// Whether the protection works on classifiers only (it trains on labels, or checks top-1
    /// answers): the planner refuses it on a denoiser before anything trains.
    pub classifiers_only: bool,
}

impl Default for Capabilities {
    /// An unprotected model's: the whole model can be stolen, nothing else is revealed, no
    /// verifier.
    fn default() -> Self {
        Self {
            theft: Theft::Whole,
            disclosure: DisclosureKind::Nothing,
            verifies_ownership: false,
            classifiers_only: false,
        }
    }
}

impl Capabilities {
    /// Checks that `protected`, what defence `id` returned, is what it declared; a mismatch is
    /// a bug in the defence and fails its cells with the reason.
    pub fn check(&self, id: &str, protected: &Protected) -> Result<()> {
        let fail = |what: String| {
            Err(Error::Integrity(format!(
                "defence `{id}` {what}; its `capabilities()` and `protect()` disagree"
            )))
        };
        let (theft, disclosure) = match &protected.stolen {
            None => (Theft::Nothing, DisclosureKind::Nothing),
            Some(s) if s.is_whole() => (Theft::Whole, s.public.kind()),
            Some(s) => (Theft::Parts, s.public.kind()),
        };
        if theft != self.theft {
            return fail(format!(
                "declares that a thief takes {:?} but exposed {theft:?}",
                self.theft
            ));
        }
        if disclosure != self.disclosure {
            return fail(format!(
                "declares a `{}` disclosure but published `{disclosure}`",
                self.disclosure
            ));
        }
        if protected.verifier.is_some() != self.verifies_ownership {
            return fail(format!(
                "declares verifies_ownership = {} but {} a verifier",
                self.verifies_ownership,
                if protected.verifier.is_some() {
                    "returned"
                } else {
                    "did not return"
                }
            ));
        }
        Ok(())
    }
}
