//! Device requests and how they resolve against a list of adapters (DESIGN.md, Devices).
//!
//! Pure logic over [`AdapterSummary`] values, so that the request table and the ranking rule
//! are tested with made-up adapter lists on machines without any GPU.

use std::cmp::Ordering;
use std::fmt::Write;

use crate::error::{Error, Result};

/// The graphics API an adapter is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiBackend {
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl ApiBackend {
    pub fn name(self) -> &'static str {
        match self {
            ApiBackend::Vulkan => "vulkan",
            ApiBackend::Metal => "metal",
            ApiBackend::Dx12 => "dx12",
            ApiBackend::Gl => "gl",
        }
    }

    fn parse(s: &str) -> Option<ApiBackend> {
        match s {
            "vulkan" | "vk" => Some(ApiBackend::Vulkan),
            "metal" => Some(ApiBackend::Metal),
            "dx12" | "d3d12" => Some(ApiBackend::Dx12),
            "gl" | "gles" | "opengl" => Some(ApiBackend::Gl),
            _ => None,
        }
    }

    /// Vulkan, Metal and DX12 rank before GL: the same card often shows under two backends.
    fn preference(self) -> u8 {
        match self {
            ApiBackend::Vulkan | ApiBackend::Metal | ApiBackend::Dx12 => 0,
            ApiBackend::Gl => 1,
        }
    }
}

/// The kind of adapter, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceType {
    Discrete,
    Integrated,
    Virtual,
    Cpu,
    Other,
}

impl DeviceType {
    pub fn name(self) -> &'static str {
        match self {
            DeviceType::Discrete => "discrete",
            DeviceType::Integrated => "integrated",
            DeviceType::Virtual => "virtual",
            DeviceType::Cpu => "cpu",
            DeviceType::Other => "other",
        }
    }

    fn preference(self) -> u8 {
        match self {
            DeviceType::Discrete => 0,
            DeviceType::Integrated => 1,
            DeviceType::Virtual => 2,
            DeviceType::Other => 3,
            DeviceType::Cpu => 4,
        }
    }
}

/// What the selection rules need to know of an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: ApiBackend,
    pub device_type: DeviceType,
    /// A software rasteriser (lavapipe, llvmpipe, WARP, SwiftShader).
    pub software: bool,
    pub memory_bytes: Option<u64>,
}

/// A parsed device request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRequest {
    /// The best hardware adapter, else the CPU backend.
    Auto,
    /// The CPU backend.
    Cpu,
    /// The best hardware adapter; an error if there is none.
    Gpu,
    /// Adapter N in the order `signflow devices` prints.
    GpuIndex(usize),
    /// The best adapter of a backend, or adapter N of that backend.
    Backend(ApiBackend, Option<usize>),
    /// The best software adapter, Vulkan before GL.
    Software,
    /// Adapters whose name contains this, case-insensitive.
    Name(String),
}

/// What a request resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Cpu,
    /// An index into the ranked adapter list.
    Adapter(usize),
}

impl DeviceRequest {
    pub fn parse(request: &str) -> Result<DeviceRequest> {
        let text = request.trim().to_ascii_lowercase();
        let invalid = |reason: String| Error::InvalidDeviceRequest {
            request: request.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid(
                "it is empty; try auto, cpu, gpu, gpu:N, vulkan, software or part of a name".into(),
            ));
        }
        let (head, index) = match text.split_once(':') {
            Some((head, n)) => {
                let n = n.parse::<usize>().map_err(|_| {
                    invalid(format!("`{n}` after the colon is not an adapter number"))
                })?;
                (head, Some(n))
            }
            None => (text.as_str(), None),
        };
        Ok(match (head, index) {
            ("auto", None) => DeviceRequest::Auto,
            ("cpu", None) => DeviceRequest::Cpu,
            ("gpu", None) => DeviceRequest::Gpu,
            ("gpu", Some(n)) => DeviceRequest::GpuIndex(n),
            ("software" | "lavapipe" | "llvmpipe" | "warp", None) => DeviceRequest::Software,
            (head, n) => match ApiBackend::parse(head) {
                Some(backend) => DeviceRequest::Backend(backend, n),
                None if n.is_none() => DeviceRequest::Name(text.clone()),
                None => return Err(invalid(format!("`{head}` is not a backend name"))),
            },
        })
    }
}

/// Sorts adapters best first: hardware before software; discrete, integrated, virtual; more
/// memory first; Vulkan, Metal and DX12 before GL. Returns the indices of `adapters` in that
/// order (a stable sort, so equal adapters keep the order the system listed them in).
pub fn rank(adapters: &[AdapterSummary]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..adapters.len()).collect();
    order.sort_by(|&a, &b| compare(&adapters[a], &adapters[b]));
    order
}

fn compare(a: &AdapterSummary, b: &AdapterSummary) -> Ordering {
    a.software
        .cmp(&b.software)
        .then(a.device_type.preference().cmp(&b.device_type.preference()))
        .then(
            b.memory_bytes
                .unwrap_or(0)
                .cmp(&a.memory_bytes.unwrap_or(0)),
        )
        .then(a.backend.preference().cmp(&b.backend.preference()))
}

/// Resolves a request against adapters that are already in ranked order.
pub fn resolve(request: &DeviceRequest, ranked: &[AdapterSummary]) -> Result<Selection> {
    let label = request_label(request);
    let not_found = |reason: String| Error::DeviceNotFound {
        request: label.clone(),
        reason,
        available: describe(ranked),
    };
    let best = |filter: &dyn Fn(&AdapterSummary) -> bool| ranked.iter().position(filter);
    match request {
        DeviceRequest::Cpu => Ok(Selection::Cpu),
        DeviceRequest::Auto => {
            Ok(best(&|a| !a.software).map_or(Selection::Cpu, Selection::Adapter))
        }
        DeviceRequest::Gpu => best(&|a| !a.software)
            .map(Selection::Adapter)
            .ok_or_else(|| {
                not_found(
                    "there is no hardware GPU adapter (use `cpu`, or `software` for a software \
                     one; on Linux, an NVIDIA driver's Vulkan also needs glvnd: libglvnd0)"
                        .into(),
                )
            }),
        DeviceRequest::GpuIndex(n) => {
            if *n < ranked.len() {
                Ok(Selection::Adapter(*n))
            } else {
                Err(not_found(format!(
                    "there is no adapter {n}; adapters are numbered 0 to {}",
                    ranked.len() as isize - 1
                )))
            }
        }
        DeviceRequest::Backend(backend, index) => {
            let of_backend: Vec<usize> = (0..ranked.len())
                .filter(|&i| ranked[i].backend == *backend)
                .collect();
            match index {
                None => of_backend.first().copied(),
                Some(n) => of_backend.get(*n).copied(),
            }
            .map(Selection::Adapter)
            .ok_or_else(|| {
                not_found(format!(
                    "{} {} adapter(s) found",
                    of_backend.len(),
                    backend.name()
                ))
            })
        }
        DeviceRequest::Software => {
            // Ranking puts GL after Vulkan already; restrict to software adapters.
            best(&|a| a.software)
                .map(Selection::Adapter)
                .ok_or_else(|| {
                    not_found("there is no software adapter (install mesa-vulkan-drivers)".into())
                })
        }
        DeviceRequest::Name(part) => {
            let hits: Vec<usize> = (0..ranked.len())
                .filter(|&i| ranked[i].name.to_ascii_lowercase().contains(part.as_str()))
                .collect();
            match hits.as_slice() {
                [one] => Ok(Selection::Adapter(*one)),
                [] => Err(not_found(
                    "no adapter's name contains it (requests: auto, cpu, gpu, gpu:N, vulkan, \
                     metal, dx12, gl, BACKEND:N, software, or part of an adapter's name)"
                        .into(),
                )),
                several => Err(not_found(format!(
                    "{} adapters match ({}); use gpu:N or BACKEND:N to pick one",
                    several.len(),
                    several
                        .iter()
                        .map(|i| format!("gpu:{i}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
    }
}

fn request_label(request: &DeviceRequest) -> String {
    match request {
        DeviceRequest::Auto => "auto".into(),
        DeviceRequest::Cpu => "cpu".into(),
        DeviceRequest::Gpu => "gpu".into(),
        DeviceRequest::GpuIndex(n) => format!("gpu:{n}"),
        DeviceRequest::Backend(b, None) => b.name().into(),
        DeviceRequest::Backend(b, Some(n)) => format!("{}:{n}", b.name()),
        DeviceRequest::Software => "software".into(),
        DeviceRequest::Name(s) => s.clone(),
    }
}

/// The adapter table printed in errors: one line per adapter, in ranked order.
pub fn describe(ranked: &[AdapterSummary]) -> String {
    let mut out = String::from("devices:\n  cpu      the CPU backend\n");
    if ranked.is_empty() {
        out.push_str("  (no GPU adapters found; for a software one install mesa-vulkan-drivers)\n");
    }
    for (i, a) in ranked.iter().enumerate() {
        let _ = writeln!(
            out,
            "  gpu:{i:<4} {} ({}, {}{})",
            a.name,
            a.backend.name(),
            a.device_type.name(),
            if a.software { ", software" } else { "" }
        );
    }
    out
}
