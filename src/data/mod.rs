//! Data: clip packs and feature packs, MP_Data import, preprocessing (resampling and the 469
//! features), splits, augmentation, and the batches the trainer consumes.

pub mod augment;
pub mod batch;
pub mod features;
pub mod import;
pub mod loader;
pub mod npy;
pub mod packs;
pub mod split;
pub mod synth;

pub use augment::{augment_clip, AugmentConfig};
pub use batch::Batch;
pub use features::{preprocess, NUM_FEATURES, RAW_DIM};
pub use import::{import_mp_data, ImportOptions, ImportReport};
pub use loader::{Epoch, Loader, LoaderConfig, Source};
pub use packs::{ClipPack, FeaturePack};
pub use packs::{Dataset, CLIP_PACK_FORMAT, FEATURE_PACK_FORMAT};
pub use split::{split, Split, SplitSpec};
pub use synth::{synth_clips, try_synth_clips};
