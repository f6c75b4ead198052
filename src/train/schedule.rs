//! The learning-rate schedule: linear warmup from 0, then a cosine decay to 0 or a constant
//! rate, with the values of Hugging Face's `get_cosine_schedule_with_warmup` and
//! `get_constant_schedule_with_warmup` (PyTorch `LambdaLR`).
//!
//! Convention: update steps count from 1, as `metrics.jsonl` writes them. Update step `s` uses
//! the rate PyTorch's scheduler holds after `s − 1` calls of `scheduler.step()`, that is the
//! lambda at the 0-based index `i = s − 1`:
//!
//! - `i < warmup`: `base · i / warmup` (so, as in PyTorch, the first update of a warmup runs
//!   at rate 0);
//! - cosine: `base · 0.5 · (1 + cos(π · (i − warmup) / max(1, total − warmup)))`;
//! - constant: `base`.
//!
//! One deliberate difference: from `i = total` on, the cosine schedule stays at 0, where
//! PyTorch's lambda would climb back up the cosine. A run never steps there; if one does,
//! 0 is the rate that does no harm. (For `total > warmup` the two agree at `i = total`, where
//! both are 0.)

use super::config::{Schedule, TrainingConfig};

/// The learning rate of every update step of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// The rate at the end of warmup.
    pub base_lr: f64,
    /// Update steps of linear warmup.
    pub warmup_steps: usize,
    /// Update steps of the whole run.
    pub total_steps: usize,
    /// What the rate does after warmup.
    pub kind: Schedule,
}

impl LrSchedule {
    /// The schedule of a run of `total_steps` update steps: warmup is `config.warmup_steps`
    /// when above 0, else `warmup_ratio · total_steps` rounded to the nearest step.
    pub fn new(config: &TrainingConfig, total_steps: usize) -> Self {
        let warmup_steps = if config.warmup_steps > 0 {
            config.warmup_steps
        } else {
            // validate() keeps the ratio in [0, 1]; `as` saturates, so even an unchecked
            // ratio cannot panic here.
            (config.warmup_ratio * total_steps as f64).round() as usize
        };
        LrSchedule {
            base_lr: config.learning_rate,
            warmup_steps,
            total_steps,
            kind: config.schedule,
        }
    }

    /// The rate update step `step` uses (counting from 1; 0 is read as 1). The factor is
    /// computed first and then multiplied by the base rate, as `LambdaLR` does, so that the
    /// values agree with PyTorch's up to the last bit of the platform's cosine.
    pub fn lr(&self, step: usize) -> f64 {
        let i = step.saturating_sub(1);
        if i < self.warmup_steps {
            return self.base_lr * (i as f64 / self.warmup_steps as f64);
        }
        match self.kind {
            Schedule::Constant => self.base_lr,
            Schedule::Cosine if i >= self.total_steps => 0.0,
            Schedule::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let progress = (i - self.warmup_steps) as f64 / span as f64;
                self.base_lr * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(warmup: usize, total: usize, kind: Schedule) -> LrSchedule {
        LrSchedule {
            base_lr: 1.0,
            warmup_steps: warmup,
            total_steps: total,
            kind,
        }
    }

    #[test]
    fn no_warmup_starts_at_the_base_rate() {
        let s = schedule(0, 10, Schedule::Cosine);
        assert_eq!(s.lr(1), 1.0);
        // i = 5 of 10: half way down the cosine.
        assert!((s.lr(6) - 0.5).abs() < 1e-12);
        let c = schedule(0, 10, Schedule::Constant);
        assert_eq!(c.lr(1), 1.0);
        assert_eq!(c.lr(10), 1.0);
    }

    #[test]
    fn step_zero_reads_as_step_one() {
        let s = schedule(4, 10, Schedule::Cosine);
        assert_eq!(s.lr(0), s.lr(1));
    }

    #[test]
    fn all_warmup_when_total_equals_warmup() {
        let s = schedule(4, 4, Schedule::Cosine);
        let lrs: Vec<f64> = (1..=4).map(|step| s.lr(step)).collect();
        assert_eq!(lrs, vec![0.0, 0.25, 0.5, 0.75]);
        assert_eq!(s.lr(5), 0.0);
    }

    #[test]
    fn past_the_end_cosine_stays_at_zero_and_constant_at_base() {
        let s = schedule(2, 10, Schedule::Cosine);
        // i = 10 = total: PyTorch's lambda is 0.5·(1 + cos π) = 0 there too.
        assert!(s.lr(11).abs() < 1e-15);
        for step in [12, 15, 20, 1000] {
            assert_eq!(s.lr(step), 0.0);
        }
        let c = schedule(2, 10, Schedule::Constant);
        assert_eq!(c.lr(1000), 1.0);
    }

    #[test]
    fn no_steps_at_all() {
        let s = schedule(0, 0, Schedule::Cosine);
        assert_eq!(s.lr(1), 0.0);
    }
}
