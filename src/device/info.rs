//! What SignFlow knows about a device: identity, limits, features and memory.

use std::collections::BTreeMap;

use super::precision::{self, CoopMatrixShape};
use super::select::{AdapterSummary, ApiBackend, DeviceType};
use crate::dtype::DType;

/// Description of one adapter (or of the CPU backend), as `signflow devices --json` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    /// Position in the ranked list (`gpu:N`); None for the CPU backend.
    pub index: Option<usize>,
    pub name: String,
    /// `cpu` for the CPU backend, else the graphics API.
    pub backend: String,
    pub device_type: String,
    pub software: bool,
    pub driver: String,
    pub driver_info: String,
    pub vendor: u32,
    /// Total device memory where the backend tells it; None rather than a guess.
    pub memory_bytes: Option<u64>,
    /// True when `memory_bytes` is host memory shared with the CPU (integrated or software).
    pub memory_shared_with_host: bool,
    pub features: Vec<String>,
    pub limits: BTreeMap<&'static str, u64>,
    pub subgroup_min: u32,
    pub subgroup_max: u32,
    /// True on the device that `auto` selects.
    pub auto: bool,
    /// The storage precisions it runs natively ([`precision::adapter_precisions`]).
    pub precisions: Vec<DType>,
    /// The cooperative-matrix configurations the adapter reports; empty when none.
    pub cooperative_matrix: Vec<CoopMatrixShape>,
}

impl DeviceInfo {
    pub(crate) fn summary(&self, api: ApiBackend, device_type: DeviceType) -> AdapterSummary {
        AdapterSummary {
            name: self.name.clone(),
            backend: api,
            device_type,
            software: self.software,
            memory_bytes: self.memory_bytes,
        }
    }

    /// The CPU backend's entry.
    pub fn cpu() -> DeviceInfo {
        DeviceInfo {
            index: None,
            name: cpu_name(),
            backend: "cpu".into(),
            device_type: "cpu".into(),
            software: false,
            driver: "signflow".into(),
            driver_info: format!(
                "{} threads, {} kernels, f32 matrix products by the gemm crate",
                rayon::current_num_threads(),
                crate::isa::instruction_set()
            ),
            vendor: 0,
            memory_bytes: host_memory_bytes(),
            memory_shared_with_host: true,
            features: Vec::new(),
            limits: BTreeMap::new(),
            subgroup_min: 0,
            subgroup_max: 0,
            auto: false,
            precisions: precision::cpu_precisions(),
            cooperative_matrix: Vec::new(),
        }
    }
}

/// The processor's model name where the OS tells it.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| format!("CPU ({})", s.trim()))
        })
        .unwrap_or_else(|| format!("CPU ({})", std::env::consts::ARCH))
}

fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub(crate) fn api_backend(backend: wgpu::Backend) -> Option<ApiBackend> {
    match backend {
        wgpu::Backend::Vulkan => Some(ApiBackend::Vulkan),
        wgpu::Backend::Metal => Some(ApiBackend::Metal),
        wgpu::Backend::Dx12 => Some(ApiBackend::Dx12),
        wgpu::Backend::Gl => Some(ApiBackend::Gl),
        _ => None,
    }
}

pub(crate) fn device_type(t: wgpu::DeviceType) -> DeviceType {
    match t {
        wgpu::DeviceType::DiscreteGpu => DeviceType::Discrete,
        wgpu::DeviceType::IntegratedGpu => DeviceType::Integrated,
        wgpu::DeviceType::VirtualGpu => DeviceType::Virtual,
        wgpu::DeviceType::Cpu => DeviceType::Cpu,
        wgpu::DeviceType::Other => DeviceType::Other,
    }
}

fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_ascii_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || [
            "llvmpipe",
            "lavapipe",
            "swiftshader",
            "basic render driver",
            "warp",
        ]
        .iter()
        .any(|s| name.contains(s))
}

/// The limits that shape kernels, by their wgpu names.
fn kernel_limits(l: &wgpu::Limits) -> BTreeMap<&'static str, u64> {
    BTreeMap::from([
        ("max_buffer_size", l.max_buffer_size),
        (
            "max_storage_buffer_binding_size",
            l.max_storage_buffer_binding_size,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage as u64,
        ),
        (
            "min_storage_buffer_offset_alignment",
            l.min_storage_buffer_offset_alignment as u64,
        ),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size as u64,
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup as u64,
        ),
        (
            "max_compute_workgroup_size_x",
            l.max_compute_workgroup_size_x as u64,
        ),
        (
            "max_compute_workgroup_size_y",
            l.max_compute_workgroup_size_y as u64,
        ),
        (
            "max_compute_workgroups_per_dimension",
            l.max_compute_workgroups_per_dimension as u64,
        ),
    ])
}

/// Reads everything SignFlow reports about an adapter.
pub(crate) fn adapter_info(adapter: &wgpu::Adapter) -> DeviceInfo {
    let info = adapter.get_info();
    let software = is_software(&info);
    let memory_bytes = match info.backend {
        #[cfg(not(any(target_os = "macos", target_os = "ios", target_arch = "wasm32")))]
        wgpu::Backend::Vulkan => super::vulkan_memory::device_local_memory(adapter),
        _ => None,
    };
    DeviceInfo {
        index: None,
        name: info.name.clone(),
        backend: api_backend(info.backend).map_or_else(
            || format!("{:?}", info.backend).to_lowercase(),
            |b| b.name().to_string(),
        ),
        device_type: device_type(info.device_type).name().into(),
        software,
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        vendor: info.vendor,
        memory_bytes,
        memory_shared_with_host: software || info.device_type != wgpu::DeviceType::DiscreteGpu,
        features: adapter
            .features()
            .iter_names()
            .map(|(name, _)| name.to_string())
            .collect(),
        limits: kernel_limits(&adapter.limits()),
        subgroup_min: info.subgroup_min_size,
        subgroup_max: info.subgroup_max_size,
        auto: false,
        precisions: precision::adapter_precisions(adapter.features()),
        cooperative_matrix: precision::adapter_coop_matrix(adapter),
    }
}
