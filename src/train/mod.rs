//! Training: `TrainingConfig`, the learning-rate schedule, metrics files, and the `Trainer`.
