//! One file per subcommand, plus the set-up they share.

pub mod data;
pub mod eval;
pub mod list;
pub mod run;
mod setup;
pub mod train;
