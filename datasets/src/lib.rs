//! Image-classification datasets for protbench.
//!
//! Every loader returns an [`ImageSet`]: decoded `u8` pixels in N x C x H x W order plus labels, so
//! the rest of the harness never sees a file format. Loaders report bad input (truncated files,
//! wrong layouts, wrong image sizes, labels out of range) as a [`DataError`] naming the file and
//! what was expected; they never panic on user data.
#![warn(missing_docs)]

mod error;
mod image_set;

pub mod augment;
pub mod batch;
pub mod cache;
pub mod catalog;
pub mod cifar10;
pub mod cifar100;
pub mod data_dir;
pub mod download;
pub mod image_folder;
pub mod names;
mod records;
pub mod split;
pub mod synthetic;
pub mod tiny_imagenet;

pub use error::{DataError, Result};
pub use image_set::{ImageSet, Split};
