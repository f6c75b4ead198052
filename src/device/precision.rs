//! Which storage precisions a device runs, the cooperative-matrix configurations an adapter
//! reports, and the one decision of which precision runs when one is asked for (DESIGN.md,
//! Precision).

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::DeviceInfo;
use crate::dtype::DType;

/// The precisions an adapter runs natively, meaning that its kernels store tensors in that
/// format without converting them first: f32 everywhere; f16 where the adapter has
/// `SHADER_F16` (WGSL `enable f16;`); bf16 on every adapter, as a storage format (two values
/// to a u32 word, computed in f32), since no adapter has bf16 arithmetic in WGSL.
pub fn adapter_precisions(features: wgpu::Features) -> Vec<DType> {
    let mut precisions = vec![DType::F32];
    if features.contains(wgpu::Features::SHADER_F16) {
        precisions.push(DType::F16);
    }
    precisions.push(DType::Bf16);
    precisions
}

/// The CPU backend stores every format and computes in f32.
pub fn cpu_precisions() -> Vec<DType> {
    DType::ALL.to_vec()
}

/// One cooperative-matrix configuration an adapter reports: `C[m,n] += A[m,k]·B[k,n]` by one
/// subgroup, A and B of element type `ab`, the accumulator C of type `cr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CoopMatrixShape {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub ab: &'static str,
    pub cr: &'static str,
}

impl CoopMatrixShape {
    fn from_wgpu(p: &wgpu::CooperativeMatrixProperties) -> CoopMatrixShape {
        CoopMatrixShape {
            m: p.m_size,
            n: p.n_size,
            k: p.k_size,
            ab: scalar_name(p.ab_type),
            cr: scalar_name(p.cr_type),
        }
    }

    /// The configuration the cooperative-matrix product uses: 16×16×16, f16 operands, f32
    /// accumulators.
    pub const F16_16X16_F32: CoopMatrixShape = CoopMatrixShape {
        m: 16,
        n: 16,
        k: 16,
        ab: "f16",
        cr: "f32",
    };
}

fn scalar_name(t: wgpu::CooperativeScalarType) -> &'static str {
    match t {
        wgpu::CooperativeScalarType::F32 => "f32",
        wgpu::CooperativeScalarType::F16 => "f16",
        wgpu::CooperativeScalarType::I32 => "i32",
        wgpu::CooperativeScalarType::U32 => "u32",
    }
}

/// The configurations `adapter` reports (none where it lacks cooperative matrices).
pub(crate) fn adapter_coop_matrix(adapter: &wgpu::Adapter) -> Vec<CoopMatrixShape> {
    if !adapter
        .features()
        .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    {
        return Vec::new();
    }
    adapter
        .cooperative_matrix_properties()
        .iter()
        .map(CoopMatrixShape::from_wgpu)
        .collect()
}

/// The storage precision that runs on `device` when `requested` is asked for: `requested`
/// where the device runs it; f16 on an adapter without SHADER_F16 runs bf16 (the same
/// storage size, computed in f32 as well), and says so once per device. Every place that
/// picks a model's precision asks here.
pub fn precision_that_runs(requested: DType, device: &DeviceInfo) -> DType {
    let runs = fallback(requested, &device.precisions);
    if runs != requested {
        static SAID: Mutex<BTreeSet<(String, &str)>> = Mutex::new(BTreeSet::new());
        let first = SAID
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((device.name.clone(), requested.name()));
        if first {
            tracing::warn!(
                "{} does not run {requested} (it lacks SHADER_F16): running {runs} storage instead",
                device.name
            );
        }
    }
    runs
}

/// `requested` if `precisions` holds it; otherwise bf16 for f16 (both 16-bit storage), else f32.
fn fallback(requested: DType, precisions: &[DType]) -> DType {
    if precisions.contains(&requested) {
        requested
    } else if requested == DType::F16 && precisions.contains(&DType::Bf16) {
        DType::Bf16
    } else {
        DType::F32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_needs_shader_f16_and_bf16_runs_everywhere() {
        let without = adapter_precisions(wgpu::Features::empty());
        assert_eq!(without, [DType::F32, DType::Bf16]);
        let with = adapter_precisions(wgpu::Features::SHADER_F16);
        assert_eq!(with, [DType::F32, DType::F16, DType::Bf16]);
        assert_eq!(cpu_precisions(), DType::ALL);
    }

    #[test]
    fn f16_without_shader_f16_runs_bf16() {
        let without = adapter_precisions(wgpu::Features::empty());
        let with = adapter_precisions(wgpu::Features::SHADER_F16);
        assert_eq!(fallback(DType::F16, &without), DType::Bf16);
        assert_eq!(fallback(DType::F16, &with), DType::F16);
        for dtype in [DType::F32, DType::Bf16] {
            assert_eq!(fallback(dtype, &without), dtype);
        }
        assert_eq!(fallback(DType::Bf16, &[DType::F32]), DType::F32);
    }

    #[test]
    fn wgpu_configurations_keep_their_sizes_and_types() {
        let p = wgpu::CooperativeMatrixProperties {
            m_size: 16,
            n_size: 16,
            k_size: 16,
            ab_type: wgpu::CooperativeScalarType::F16,
            cr_type: wgpu::CooperativeScalarType::F32,
            saturating_accumulation: false,
        };
        assert_eq!(
            CoopMatrixShape::from_wgpu(&p),
            CoopMatrixShape::F16_16X16_F32
        );
        let json = serde_json::to_value(CoopMatrixShape::from_wgpu(&p)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"m": 16, "n": 16, "k": 16, "ab": "f16", "cr": "f32"})
        );
    }
}
