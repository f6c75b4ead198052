//! The model layer: `SignTransformer` and its configuration, parameters and checkpoints.
//! Written once against the [`crate::Backend`] trait.

pub mod checkpoint;
pub mod config;
pub mod params;
pub mod transformer;
pub mod workspace;

pub use checkpoint::{Checkpoint, Preprocessing};
pub use config::ModelConfig;
pub use params::ParamLayout;
pub use transformer::{DropoutStep, SignTransformer};
pub use workspace::Workspace;
