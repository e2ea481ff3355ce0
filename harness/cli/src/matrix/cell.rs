//! The cells of a matrix. A cell is one victim (dataset, model, seed) and one [`Job`] on it; the
//! job holds indices into the plan's defence and attack entries, so the runner matches on what a
//! cell does instead of on the strings records use. [`CellKey`] is the cell's identity in records
//! (`*` and `-` stand for "no defence" and "no attack" there, see [`ANY_DEFENCE`] and
//! [`NO_ATTACK`]), for resume, shards and reports.

use sha2::{Digest, Sha256};

use super::plan::{AttackEntry, DefenceEntry};
pub use super::records::{ANY_DEFENCE, NO_ATTACK};

/// What a victim is trained from: cells of one victim share its training.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VictimKey {
    /// Dataset id.
    pub dataset: String,
    /// Model id.
    pub model: String,
    /// Seed.
    pub seed: u64,
}

/// What a cell does, by index into [`super::plan::Plan`]'s entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    /// The defence's own rows: the owner's accuracy, overhead, access levels, its measures.
    Reference {
        /// Defence entry.
        defence: usize,
    },
    /// An attack that needs no exposure, run once per victim whatever the defence: the no-theft
    /// reference (records say defence `*`).
    Unexposed {
        /// Attack entry.
        attack: usize,
    },
    /// An attack on a protected victim. An attack that needs no exposure runs here only as the
    /// null case of the defence's ownership verifier, and sees nothing of the protected model.
    Attack {
        /// Defence entry.
        defence: usize,
        /// Attack entry.
        attack: usize,
    },
}

/// One cell: a victim and a job on it.
#[derive(Debug, Clone)]
pub struct Cell {
    /// The victim.
    pub victim: VictimKey,
    /// What to do with it.
    pub job: Job,
    /// The cell's identity in records.
    pub key: CellKey,
}

impl Cell {
    /// The cell of `job` on `victim`, named after the plan's entries.
    pub fn new(
        victim: &VictimKey,
        job: Job,
        defences: &[DefenceEntry],
        attacks: &[AttackEntry],
    ) -> Self {
        let (defence, attack) = match job {
            Job::Reference { defence } => (defences[defence].name.as_str(), NO_ATTACK),
            Job::Unexposed { attack } => (ANY_DEFENCE, attacks[attack].name.as_str()),
            Job::Attack { defence, attack } => (
                defences[defence].name.as_str(),
                attacks[attack].name.as_str(),
            ),
        };
        Self {
            victim: victim.clone(),
            job,
            key: CellKey {
                dataset: victim.dataset.clone(),
                model: victim.model.clone(),
                seed: victim.seed,
                defence: defence.to_string(),
                attack: attack.to_string(),
            },
        }
    }

    /// A stable string for shard assignment, resume and messages.
    pub fn id(&self) -> String {
        self.key.id()
    }

    /// The defence entry the cell depends on (none for [`Job::Unexposed`]).
    pub fn defence(&self) -> Option<usize> {
        match self.job {
            Job::Reference { defence } | Job::Attack { defence, .. } => Some(defence),
            Job::Unexposed { .. } => None,
        }
    }
}

/// A cell's identity in records: the strings its rows carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct CellKey {
    /// Dataset id.
    pub dataset: String,
    /// Model id.
    pub model: String,
    /// Seed.
    pub seed: u64,
    /// Defence entry name ([`ANY_DEFENCE`] for attacks that need no exposure).
    pub defence: String,
    /// Attack entry name ([`NO_ATTACK`] for the defence's own rows).
    pub attack: String,
}

impl CellKey {
    /// `dataset/model/seed/defence/attack`, as [`super::records::Record::cell_id`] writes it.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.dataset, self.model, self.seed, self.defence, self.attack
        )
    }

    /// Whether this cell belongs to shard `i` of `n` by a hash of its id (deterministic,
    /// balanced on average). Used when a matrix has fewer victims than shards.
    pub fn in_shard_by_hash(&self, i: usize, n: usize) -> bool {
        let h = Sha256::digest(self.id().as_bytes());
        let v = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        (v % n as u64) as usize == i
    }
}
