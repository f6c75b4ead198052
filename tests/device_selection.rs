//! The device request table and the ranking rule, on made-up adapter lists.

use signflow::device::{
    rank, resolve, AdapterSummary, ApiBackend, DeviceRequest, DeviceType, Selection,
};
use signflow::Error;

fn adapter(
    name: &str,
    backend: ApiBackend,
    device_type: DeviceType,
    software: bool,
    memory_gib: Option<u64>,
) -> AdapterSummary {
    AdapterSummary {
        name: name.into(),
        backend,
        device_type,
        software,
        memory_bytes: memory_gib.map(|g| g << 30),
    }
}

/// A workstation: an iGPU, a small and a large discrete card (the large one also under GL),
/// and lavapipe under Vulkan and GL, listed in a scrambled order.
fn workstation() -> Vec<AdapterSummary> {
    use ApiBackend::*;
    use DeviceType::*;
    vec![
        adapter("llvmpipe (LLVM 15)", Gl, Cpu, true, None),
        adapter(
            "Intel(R) UHD Graphics 770",
            Vulkan,
            Integrated,
            false,
            Some(16),
        ),
        adapter("NVIDIA GeForce RTX 4090", Gl, Discrete, false, None),
        adapter("AMD Radeon RX 6600", Vulkan, Discrete, false, Some(8)),
        adapter("llvmpipe (LLVM 15)", Vulkan, Cpu, true, Some(2)),
        adapter("NVIDIA GeForce RTX 4090", Vulkan, Discrete, false, Some(24)),
    ]
}

fn ranked(list: Vec<AdapterSummary>) -> Vec<AdapterSummary> {
    rank(&list).into_iter().map(|i| list[i].clone()).collect()
}

fn pick(request: &str, adapters: &[AdapterSummary]) -> Result<Selection, Error> {
    resolve(&DeviceRequest::parse(request)?, adapters)
}

fn name_of(sel: Selection, adapters: &[AdapterSummary]) -> String {
    match sel {
        Selection::Cpu => "cpu".into(),
        Selection::Adapter(i) => format!("{} / {}", adapters[i].name, adapters[i].backend.name()),
    }
}

#[test]
fn ranking_puts_hardware_first_then_type_memory_and_backend() {
    let r = ranked(workstation());
    let order: Vec<String> = (0..r.len())
        .map(|i| name_of(Selection::Adapter(i), &r))
        .collect();
    assert_eq!(
        order,
        [
            "NVIDIA GeForce RTX 4090 / vulkan",
            "AMD Radeon RX 6600 / vulkan",
            "NVIDIA GeForce RTX 4090 / gl",
            "Intel(R) UHD Graphics 770 / vulkan",
            "llvmpipe (LLVM 15) / vulkan",
            "llvmpipe (LLVM 15) / gl",
        ]
    );
}

#[test]
fn request_table() {
    let r = ranked(workstation());
    let cases = [
        ("auto", "NVIDIA GeForce RTX 4090 / vulkan"),
        ("cpu", "cpu"),
        ("CPU", "cpu"),
        ("gpu", "NVIDIA GeForce RTX 4090 / vulkan"),
        ("gpu:3", "Intel(R) UHD Graphics 770 / vulkan"),
        ("gpu:5", "llvmpipe (LLVM 15) / gl"),
        ("vulkan", "NVIDIA GeForce RTX 4090 / vulkan"),
        ("vulkan:1", "AMD Radeon RX 6600 / vulkan"),
        ("vulkan:3", "llvmpipe (LLVM 15) / vulkan"),
        ("gl", "NVIDIA GeForce RTX 4090 / gl"),
        ("gl:1", "llvmpipe (LLVM 15) / gl"),
        ("software", "llvmpipe (LLVM 15) / vulkan"),
        ("lavapipe", "llvmpipe (LLVM 15) / vulkan"),
        ("llvmpipe", "llvmpipe (LLVM 15) / vulkan"),
        ("radeon", "AMD Radeon RX 6600 / vulkan"),
        ("UHD", "Intel(R) UHD Graphics 770 / vulkan"),
    ];
    for (request, want) in cases {
        let got = pick(request, &r).unwrap_or_else(|e| panic!("{request}: {e}"));
        assert_eq!(name_of(got, &r), want, "request {request}");
    }
}

#[test]
fn auto_falls_back_to_cpu_and_gpu_refuses_software_only() {
    let r = ranked(vec![adapter(
        "llvmpipe (LLVM 15)",
        ApiBackend::Vulkan,
        DeviceType::Cpu,
        true,
        None,
    )]);
    assert_eq!(pick("auto", &r).unwrap(), Selection::Cpu);
    assert_eq!(pick("software", &r).unwrap(), Selection::Adapter(0));
    assert_eq!(pick("gpu:0", &r).unwrap(), Selection::Adapter(0));
    let err = pick("gpu", &r).unwrap_err().to_string();
    assert!(err.contains("no hardware GPU"), "{err}");
    assert!(
        err.contains("llvmpipe"),
        "the error lists the adapters: {err}"
    );
    assert_eq!(pick("auto", &[]).unwrap(), Selection::Cpu);
}

#[test]
fn unknown_ambiguous_and_out_of_range_requests_list_the_adapters() {
    let r = ranked(workstation());
    for request in [
        "nosuchcard",
        "nvidia",
        "gpu:6",
        "metal",
        "dx12:0",
        "vulkan:4",
    ] {
        let err = pick(request, &r).expect_err(request).to_string();
        assert!(
            err.contains("gpu:0") && err.contains("RTX 4090"),
            "{request}: {err}"
        );
        assert!(err.contains("cpu"), "{request}: {err}");
    }
    let err = pick("nvidia", &r).unwrap_err().to_string();
    assert!(err.contains("2 adapters match"), "{err}");
}

#[test]
fn malformed_requests_are_errors() {
    for request in ["", "gpu:x", "gpu:-1", "banana:2"] {
        assert!(
            DeviceRequest::parse(request).is_err(),
            "{request:?} should not parse"
        );
    }
}

/// Listing adapters prints the list and nothing else: Mesa's Vulkan device-selection layer
/// looks for a Wayland display, and where `XDG_RUNTIME_DIR` is not set libwayland says so on
/// standard error unless `signflow` keeps the layer out. The CPU backend lists no adapters.
#[test]
fn no_display_errors_from_listing_adapters() {
    for args in [
        &["devices", "--json"][..],
        &[
            "bench",
            "--device",
            "cpu",
            "--filter",
            "copy",
            "--memory-rows",
            "1",
        ][..],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signflow"))
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("NODEVICE_SELECT")
            .output()
            .expect("signflow runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(!err.contains("XDG_RUNTIME_DIR"), "{args:?}: {err}");
    }
}
