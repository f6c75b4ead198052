//! Dynamic loss scaling for f16 training, as PyTorch's `GradScaler`: the loss gradient is
//! multiplied by the scale so that small activation gradients survive f16's range, the f32
//! parameter gradients are unscaled and checked before the update, and an update with a
//! non-finite gradient is skipped (weights, moments and AdamW's step count untouched) and the
//! scale halved; after `growth_interval` clean updates in a row it doubles. bf16 has f32's
//! range and needs none: its scale stays 1 and no update is skipped.

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

/// What a run's scaler has done, saved in `state.safetensors` so that `--resume` continues
/// with it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScalerState {
    /// The scale the next update's loss gradient is multiplied by.
    pub scale: f32,
    /// Clean updates since the scale last changed (PyTorch's `_growth_tracker`).
    pub growth_tracker: u32,
    /// Updates skipped for a non-finite gradient since the run started.
    pub skipped: u64,
}

/// The loss scaler of one run: scaling in f16, a scale of 1 otherwise.
pub struct LossScaler<B: Backend> {
    state: ScalerState,
    growth_interval: u32,
    /// Where [`Backend::unscale_check`] flags a non-finite gradient; present when scaling.
    found_inf: Option<Tensor<B>>,
}

impl<B: Backend> LossScaler<B> {
    /// The scaler of a run whose activations are stored in `precision`, starting at
    /// `init_scale` (f16 only; [`LossScaler::restore`] continues a saved one).
    pub fn new(
        backend: &B,
        precision: DType,
        init_scale: f32,
        growth_interval: u32,
    ) -> Result<LossScaler<B>> {
        let scaling = precision == DType::F16;
        let found_inf = scaling
            .then(|| backend.alloc(&[1], DType::F32))
            .transpose()?;
        let state = ScalerState {
            scale: if scaling { init_scale } else { 1.0 },
            growth_tracker: 0,
            skipped: 0,
        };
        Ok(LossScaler {
            state,
            growth_interval,
            found_inf,
        })
    }

    /// Continues from a saved state (`--resume`).
    pub fn restore(&mut self, state: ScalerState) {
        self.state = state;
    }

    /// The factor the loss gradient is multiplied by.
    pub fn scale(&self) -> f32 {
        self.state.scale
    }

    pub fn state(&self) -> &ScalerState {
        &self.state
    }

    /// Records the unscaling of an update's f32 gradients and the check for non-finite ones.
    pub fn unscale(&self, backend: &B, grads: &Tensor<B>) -> Result<()> {
        match &self.found_inf {
            Some(found) => backend.unscale_check(grads, 1.0 / self.state.scale, found),
            None => Ok(()),
        }
    }

    /// After [`LossScaler::unscale`]: whether the update must be skipped, and the scale of
    /// the next one. Reads the check's flag, which waits for the gradients: call it after a
    /// read that waits for them anyway (the trainer's loss).
    pub fn update(&mut self) -> Result<bool> {
        let Some(found) = &self.found_inf else {
            return Ok(false);
        };
        let skip = found.to_f32_vec()?[0] != 0.0;
        self.advance(skip);
        Ok(skip)
    }

    /// GradScaler's rule: halve and start counting afresh after a non-finite gradient;
    /// double after `growth_interval` clean updates in a row (unless that overflows f32).
    fn advance(&mut self, skip: bool) {
        let s = &mut self.state;
        if skip {
            s.scale *= 0.5;
            s.growth_tracker = 0;
            s.skipped += 1;
            return;
        }
        s.growth_tracker += 1;
        if s.growth_tracker == self.growth_interval {
            if (s.scale * 2.0).is_finite() {
                s.scale *= 2.0;
            }
            s.growth_tracker = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::config::GpuConfig;
    use crate::tensor::HostTensor;

    fn cpu() -> CpuBackend {
        CpuBackend::new(&GpuConfig {
            device: "cpu".into(),
            ..GpuConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn an_injected_inf_skips_and_halves_then_clean_updates_grow_the_scale() {
        let b = cpu();
        let mut s = LossScaler::new(&b, DType::F16, 1024.0, 3).unwrap();
        let grads = b
            .upload(&HostTensor::from_f32(&[3], vec![512.0, f32::INFINITY, 2.0]).unwrap())
            .unwrap();
        s.unscale(&b, &grads).unwrap();
        assert!(s.update().unwrap());
        assert_eq!(
            s.state().clone(),
            ScalerState {
                scale: 512.0,
                growth_tracker: 0,
                skipped: 1,
            }
        );
        let grads = b
            .upload(&HostTensor::from_f32(&[3], vec![512.0, -256.0, 2.0]).unwrap())
            .unwrap();
        s.unscale(&b, &grads).unwrap();
        // Unscaled by the scale of the update that produced them.
        assert_eq!(grads.to_f32_vec().unwrap(), [1.0, -0.5, 2.0 / 512.0]);
        let mut scales = Vec::new();
        for _ in 0..7 {
            assert!(!s.update().unwrap());
            scales.push(s.scale());
        }
        assert_eq!(
            scales,
            [512.0, 512.0, 1024.0, 1024.0, 1024.0, 2048.0, 2048.0]
        );
        assert_eq!(s.state().skipped, 1);
    }

    #[test]
    fn the_scale_never_grows_past_f32() {
        let b = cpu();
        let mut s = LossScaler::new(&b, DType::F16, f32::MAX, 1).unwrap();
        s.advance(false);
        assert_eq!(s.scale(), f32::MAX);
    }

    #[test]
    fn bf16_and_f32_neither_scale_nor_skip() {
        let b = cpu();
        for precision in [DType::Bf16, DType::F32] {
            let mut s = LossScaler::new(&b, precision, 65536.0, 1).unwrap();
            let grads = b
                .upload(&HostTensor::from_f32(&[1], vec![f32::NAN]).unwrap())
                .unwrap();
            s.unscale(&b, &grads).unwrap();
            assert!(!s.update().unwrap());
            assert_eq!(s.scale(), 1.0);
        }
    }
}
