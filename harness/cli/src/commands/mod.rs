//! One file per subcommand, plus the set-up they share.

pub mod bench;
pub mod compare;
pub mod data;
pub mod eval;
pub mod list;
pub mod merge;
mod output;
pub mod protect;
pub mod run;
mod setup;
pub mod train;
