//! `GpuConfig`: which device to use and how much of its memory to take.

use crate::dtype::DType;
use crate::error::{Error, Result};

/// The half-precision format of mixed-precision training (DESIGN.md, Precision), as the
/// replaced system's `amp_dtype`: `f16` (also `float16`) or `bf16` (also `bfloat16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum AmpDtype {
    #[default]
    #[serde(rename = "f16", alias = "float16")]
    F16,
    #[serde(rename = "bf16", alias = "bfloat16")]
    Bf16,
}

impl AmpDtype {
    /// The storage dtype of activations and of the products' weight copies.
    pub fn dtype(self) -> DType {
        match self {
            AmpDtype::F16 => DType::F16,
            AmpDtype::Bf16 => DType::Bf16,
        }
    }

    /// The AMP format whose storage dtype is `dtype`; None for f32 (no AMP).
    pub fn of(dtype: DType) -> Option<AmpDtype> {
        match dtype {
            DType::F32 => None,
            DType::F16 => Some(AmpDtype::F16),
            DType::Bf16 => Some(AmpDtype::Bf16),
        }
    }

    /// `none` (None), or a format by either of its names.
    pub fn parse_amp(text: &str) -> Result<Option<AmpDtype>> {
        match text {
            "none" => Ok(None),
            "f16" | "float16" => Ok(Some(AmpDtype::F16)),
            "bf16" | "bfloat16" => Ok(Some(AmpDtype::Bf16)),
            _ => Err(Error::InvalidConfig {
                field: "amp",
                value: text.to_string(),
                allowed: "none, f16 (float16) or bf16 (bfloat16)",
            }),
        }
    }
}

impl std::fmt::Display for AmpDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dtype().name())
    }
}

/// Device and memory settings, the counterpart of the PyTorch system's `GPUConfig`.
/// Autotuning settings join when that feature lands.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GpuConfig {
    /// A device request as DESIGN.md's Devices table reads (`auto`, `cpu`, `gpu:1`, `vulkan`, ...).
    pub device: String,
    /// Share of the device's memory the pool may hold, in (0, 1].
    pub memory_fraction: f64,
    /// An absolute budget in MiB; takes precedence over `memory_fraction` when set.
    pub memory_limit_mb: Option<u64>,
    /// Empty the buffer pool's cache every this many training steps (0 = never).
    pub empty_cache_interval: u32,
    /// Whether f16 matrix products use the adapter's cooperative matrices (tensor cores).
    pub cooperative_matrix: CoopMatrix,
    /// Mixed-precision training (the replaced system's `enable_amp`).
    pub enable_amp: bool,
    /// Its half-precision format.
    pub amp_dtype: AmpDtype,
}

/// The cooperative-matrix switch (`--coop-matrix`): `auto` uses them where the adapter
/// reports 16×16 f16 matrices with f32 accumulators and they pass a check when the adapter is
/// opened; `off` runs the register-tiled kernels everywhere.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum CoopMatrix {
    #[default]
    Auto,
    Off,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            device: "auto".into(),
            memory_fraction: 0.9,
            memory_limit_mb: None,
            empty_cache_interval: 0,
            cooperative_matrix: CoopMatrix::Auto,
            enable_amp: false,
            amp_dtype: AmpDtype::default(),
        }
    }
}

impl GpuConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.memory_fraction > 0.0 && self.memory_fraction <= 1.0) {
            return Err(Error::InvalidConfig {
                field: "memory_fraction",
                value: self.memory_fraction.to_string(),
                allowed: "a fraction greater than 0 and at most 1",
            });
        }
        if self.memory_limit_mb == Some(0) {
            return Err(Error::InvalidConfig {
                field: "memory_limit_mb",
                value: "0".into(),
                allowed: "at least 1 MiB, or unset for no absolute limit",
            });
        }
        crate::device::DeviceRequest::parse(&self.device)?;
        Ok(())
    }

    /// The pool's budget in bytes for a device with `device_memory` bytes (if known).
    /// None when neither an absolute limit nor the device's memory is known.
    pub fn budget_bytes(&self, device_memory: Option<u64>) -> Option<u64> {
        match self.memory_limit_mb {
            Some(mb) => Some(mb.saturating_mul(1024 * 1024)),
            None => device_memory.map(|m| (m as f64 * self.memory_fraction) as u64),
        }
    }
}
