//! The small victim that component tests protect and attack: ResNet-20 trained for 4 epochs on
//! 8x8 synthetic images. One definition, so every defence and attack test measures against the
//! same model and a change to the recipe is made once. A few seconds on 2 cores in a test
//! profile with optimised dependencies; test binaries train it once (keep it in a `OnceLock`).
//! [`settings`] holds the range checks every component crate runs on its settings table.

pub mod settings;

use std::path::Path;

use candle_core::Device;
use datasets::catalog::{DatasetId, LoadOptions, Normalization};
use datasets::{ImageSet, Split};

use crate::protect::{PlainModel, Victim};
use crate::train::{CrossEntropy, TrainConfig, TrainOptions, train};
use crate::{Arch, ModelSpec, ParamStore, Result, Task};

/// Input normalisation of the synthetic images.
pub const NORM: Normalization = Normalization::SYNTHETIC;

/// The synthetic dataset, split as the matrix splits a real one: the owner trains on the first
/// half of the training images, the attacker holds the second half.
pub struct SyntheticData {
    /// Every training image.
    pub train: ImageSet,
    /// The owner's half.
    pub owner: ImageSet,
    /// The attacker's half (disjoint from the owner's).
    pub attacker: ImageSet,
    /// The test images.
    pub test: ImageSet,
}

/// Loads the 8x8 synthetic dataset (generated in memory: no files, no cache).
pub fn synthetic_data() -> Result<SyntheticData> {
    let opts = LoadOptions {
        use_cache: false,
        ..LoadOptions::default()
    };
    let id = DatasetId::Synthetic(8);
    let root = Path::new(".");
    let train = datasets::catalog::load(&id, root, Split::Train, &opts)?;
    let test = datasets::catalog::load(&id, root, Split::Test, &opts)?;
    let half = train.len() / 2;
    let owner = train.select(&(0..half).collect::<Vec<_>>());
    let attacker = train.select(&(half..train.len()).collect::<Vec<_>>());
    Ok(SyntheticData {
        train,
        owner,
        attacker,
        test,
    })
}

/// The victim's recipe: 4 epochs, batch 32, no augmentation, seed 0.
pub fn recipe() -> TrainConfig {
    TrainConfig {
        epochs: 4,
        batch_size: 32,
        augment: None,
        normalization: Some(NORM),
        seed: 0,
        ..TrainConfig::default()
    }
}

/// ResNet-20 (10 classes, weights from seed 0) trained with [`recipe`] on `images`, on the CPU.
pub fn train_victim(images: &ImageSet) -> Result<Victim> {
    let model = PlainModel::build(
        ModelSpec::new(Arch::Resnet20, 10),
        ParamStore::new(0, &Device::Cpu),
    )?;
    let recipe = recipe();
    train(
        model.model.as_ref(),
        &model.params,
        images,
        &recipe,
        &CrossEntropy,
        &TrainOptions::default(),
        &Device::Cpu,
    )?;
    Ok(Victim {
        model,
        train: recipe,
        task: Task::Classification,
    })
}
