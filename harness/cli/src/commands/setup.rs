//! Set-up shared by the commands: finding and loading data, building models, printing results.

use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use datasets::catalog::{DatasetId, LoadOptions};
use datasets::{ImageSet, Split};
use harness_core::{Arch, Model, ModelSpec, ParamStore};

use crate::cli::{DataOpts, ModelOpts};

/// A loaded split with what it took.
pub struct Loaded {
    /// The dataset id as parsed.
    pub id: DatasetId,
    /// The images.
    pub set: ImageSet,
    /// Wall time of the load (decode or cache read).
    pub seconds: f64,
}

/// Loads one split of the dataset named in `opts`.
pub fn load_split(opts: &DataOpts, split: Split, progress: bool) -> anyhow::Result<Loaded> {
    let id = DatasetId::parse(&opts.dataset)?;
    let data_dir = datasets::data_dir::resolve(opts.data_dir.as_deref());
    let load_opts = LoadOptions {
        use_cache: !opts.no_cache,
        progress,
        ..LoadOptions::default()
    };
    let start = Instant::now();
    let set = datasets::catalog::load(&id, &data_dir, split, &load_opts)
        .with_context(|| format!("failed to load the {split} split of `{}`", id.id()))?;
    Ok(Loaded {
        id,
        set,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Keeps at most `limit` images, class-balanced and seeded; the whole set when `limit` is None.
pub fn limit(set: ImageSet, limit: Option<usize>, seed: u64) -> anyhow::Result<ImageSet> {
    match limit {
        Some(0) => {
            Err(crate::exit::UsageError("a limit of 0 images leaves nothing to use".into()).into())
        }
        Some(n) if n < set.len() => {
            let idx = datasets::split::stratified_subset(&set, n, seed);
            Ok(set.select(&idx))
        }
        _ => Ok(set),
    }
}

/// Builds the model named in `opts` for `set`'s classes and channels, weights seeded by `seed`.
pub fn build_model(
    opts: &ModelOpts,
    set: &ImageSet,
    seed: u64,
    device: &Device,
) -> anyhow::Result<(ModelSpec, ParamStore, Box<dyn Model>)> {
    let arch = Arch::parse(&opts.model)?;
    if !arch.is_classifier() {
        return Err(crate::exit::UsageError(format!(
            "`{}` is a denoiser, not a classifier; train and eval take classifiers (see `harness list`)",
            arch.id()
        ))
        .into());
    }
    if !(opts.width.is_finite() && opts.width > 0.0) {
        return Err(crate::exit::UsageError(format!(
            "--width must be positive, got {}",
            opts.width
        ))
        .into());
    }
    let spec = ModelSpec::new(arch, set.num_classes())
        .with_in_channels(set.channels)
        .with_width(opts.width);
    let params = ParamStore::new(seed, device);
    let model = harness_core::zoo::build(&spec, &params)
        .with_context(|| format!("failed to build `{}`", arch.id()))?;
    Ok((spec, params, model))
}

/// Prints `value` as one JSON line on stdout (the last line, for scripts).
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}
