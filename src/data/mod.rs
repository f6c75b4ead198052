//! Data: clip packs and feature packs, MP_Data import, preprocessing (resampling and the 469
//! features), splits, augmentation, and the batches the trainer consumes.

pub mod batch;
pub mod packs;

pub use batch::Batch;
pub use packs::{ClipPack, FeaturePack};
