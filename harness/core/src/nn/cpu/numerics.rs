//! Which arithmetic the CPU kernels use: `fixed` gives the same bits on every CPU and thread
//! count (matrix products in one fused multiply-add order, see `fixed_gemm`), `fast` lets the
//! `gemm` crate choose its order of sums from the CPU's caches and instruction set. A run records
//! the mode with its results, since numbers made under `fast` may not reproduce on another
//! machine.
//!
//! `fixed` is the default: a benchmark whose numbers move when only the machine moved cannot
//! gate anything, and a claim table that spans several sittings on different CPUs must still be
//! one table. `fast` (`PROTBENCH_NUMERICS=fast`) stays for speed at the cost of that guarantee;
//! what it costs is measured in `results/summaries/engine-speed.md`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

pub use super::fixed_gemm::Path as F32Kernel;

/// [`Numerics::force`]'s choice: 0 none, 1 fixed, 2 fast.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// The numerics mode of the CPU kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numerics {
    /// One order of arithmetic everywhere: reproducible across CPUs and thread counts.
    Fixed,
    /// The `gemm` crate's products, whose order of sums depends on the CPU's caches and
    /// instruction set.
    Fast,
}

impl Numerics {
    /// Its name, as `PROTBENCH_NUMERICS` and `run.json` write it.
    pub fn name(self) -> &'static str {
        match self {
            Numerics::Fixed => "fixed",
            Numerics::Fast => "fast",
        }
    }

    /// The mode of this process: [`Numerics::force`]'s if called, else `PROTBENCH_NUMERICS`
    /// (`fixed` or `fast`; read once, an unknown value is warned about), else
    /// [`Numerics::Fixed`].
    pub fn selected() -> Numerics {
        match FORCED.load(Ordering::Relaxed) {
            1 => return Numerics::Fixed,
            2 => return Numerics::Fast,
            _ => {}
        }
        static SELECTED: OnceLock<Numerics> = OnceLock::new();
        *SELECTED.get_or_init(|| match std::env::var("PROTBENCH_NUMERICS").as_deref() {
            Ok("fixed") | Err(_) => Numerics::Fixed,
            Ok("fast") => Numerics::Fast,
            Ok(other) => {
                eprintln!(
                    "warning: PROTBENCH_NUMERICS={other} is neither fixed nor fast; using fixed"
                );
                Numerics::Fixed
            }
        })
    }

    /// Sets the mode for the whole process (a test of the fixed mode runs in its own process
    /// and calls this first). Only products started afterwards see it.
    pub fn force(mode: Numerics) {
        FORCED.store(
            match mode {
                Numerics::Fixed => 1,
                Numerics::Fast => 2,
            },
            Ordering::Relaxed,
        );
    }
}

/// What a run records of its arithmetic: the mode, and under `fixed` the f32 product kernel
/// (under `fast` the `gemm` crate chooses its own).
pub fn describe() -> String {
    match Numerics::selected() {
        Numerics::Fixed => format!("fixed ({} f32 kernel)", F32Kernel::selected().name()),
        Numerics::Fast => "fast (gemm crate)".to_string(),
    }
}
