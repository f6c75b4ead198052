//! Training: `TrainingConfig`, the learning-rate schedule, the loss scaler, metrics files, and
//! the `Trainer`.

pub mod config;
pub mod curves;
pub mod evaluate;
pub mod metrics;
pub mod optimizer;
pub mod scaler;
pub mod schedule;
pub mod state;
pub mod trainer;

pub use config::{Augment, Schedule, TrainingConfig};
pub use curves::write_curves_svg;
pub use evaluate::{evaluate, EvalReport};
pub use metrics::{split_records, EpochRecord, MetricsLog, Record, StepRecord};
pub use optimizer::Optimizer;
pub use scaler::{LossScaler, ScalerState};
pub use schedule::LrSchedule;
pub use trainer::{initial_model, Trainer};
