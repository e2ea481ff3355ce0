//! One file per subcommand, plus the set-up they share.

pub mod data;
pub mod eval;
pub mod list;
mod setup;
pub mod train;
