//! `harness`: the protbench command line. `main` reads like the pipeline: parse, dispatch, map
//! the outcome to an exit code (0 ok, 1 failure, 2 usage or configuration error).

mod cli;
mod commands;
mod device;
mod exit;
mod lock;
mod matrix;
mod provenance;
#[cfg(test)]
mod toy_protection;

use clap::Parser;

#[allow(unsafe_code)]
fn main() -> std::process::ExitCode {
    // SAFETY: first statement of main; no other thread exists yet.
    unsafe { harness_core::nn::cpu::keep_candle_elementwise_on_one_thread() };
    harness_core::nn::cpu::workspace::tune_allocator();
    let cli = cli::Cli::parse();
    // The command runs on a rayon worker, so the kernels' parallel loops are entered from
    // inside the pool: no hand-off to the pool and futex wake-up of a blocked main thread for
    // each of the hundreds of ops of a training step.
    let result = rayon::scope(|_| match cli.command {
        cli::Command::Run(args) => commands::run::run(args),
        cli::Command::Train(args) => commands::train::run(args),
        cli::Command::Eval(args) => commands::eval::run(args),
        cli::Command::Data(args) => commands::data::run(args),
        cli::Command::List(args) => commands::list::run(args),
        cli::Command::Merge(args) => commands::merge::run(args),
        cli::Command::Compare(args) => commands::compare::run(args),
        cli::Command::Bench(args) => commands::bench::run(args),
        cli::Command::Protect(args) => commands::protect::run(args),
    });
    exit::report(result)
}
