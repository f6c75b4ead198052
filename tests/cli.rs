//! The command line: JSON outputs and readable errors for bad devices.

use std::process::Command;

fn signflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_signflow"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn devices_json_lists_the_cpu_and_the_adapters() {
    let out = signflow(&["devices", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let devices: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is JSON alone");
    let devices = devices.as_array().expect("an array");
    assert_eq!(devices[0]["backend"], "cpu");
    assert!(
        devices.len() >= 2,
        "at least one adapter (install mesa-vulkan-drivers): {devices:?}"
    );
    let autos = devices.iter().filter(|d| d["auto"] == true).count();
    assert_eq!(autos, 1, "exactly one device is auto's");
    for d in &devices[1..] {
        for field in [
            "index",
            "name",
            "backend",
            "device_type",
            "software",
            "driver",
            "driver_info",
            "vendor",
            "memory_bytes",
            "features",
            "limits",
            "subgroup_min",
            "subgroup_max",
            "auto",
        ] {
            assert!(d.get(field).is_some(), "{field} missing from {d}");
        }
        assert!(
            d["limits"]["max_compute_invocations_per_workgroup"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert!(
            d["limits"]["max_storage_buffer_binding_size"]
                .as_u64()
                .unwrap()
                > 0
        );
    }
    let software_vulkan = devices
        .iter()
        .any(|d| d["backend"] == "vulkan" && d["software"] == true);
    let hardware = devices
        .iter()
        .any(|d| d["software"] == false && d["backend"] != "cpu");
    assert!(software_vulkan || hardware, "{devices:?}");
}

#[test]
fn unknown_device_is_a_readable_error_listing_the_adapters() {
    for command in ["selftest", "bench"] {
        let out = signflow(&[command, "--device", "no-such-gpu"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error: device `no-such-gpu`"), "{err}");
        assert!(
            err.contains("gpu:0") && err.contains("cpu"),
            "the adapters are listed: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `--memory-rows` sizes the memory-bound cases; `--kernel-times` breaks a GPU case down by
/// kernel (the software adapter writes timestamps too).
#[test]
fn bench_memory_rows_and_kernel_times() {
    let out = signflow(&[
        "bench",
        "--device",
        "software",
        "--memory-rows",
        "3",
        "--filter",
        "copy,layernorm_bwd",
        "--samples",
        "1",
        "--kernel-times",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is JSON alone");
    let row = |op: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["op"] == op)
            .unwrap_or_else(|| panic!("{op} missing: {rows}"))
            .clone()
    };
    // 3 × 1024 f32 read and written.
    assert_eq!(row("copy")["bytes"], 2 * 3 * 1024 * 4);
    let kernels = row("layernorm_bwd")["kernels"].clone();
    let kernels = kernels.as_array().expect("a kernel breakdown");
    assert!(
        kernels.iter().any(|k| {
            k["kernel"].as_str().unwrap().ends_with("::layernorm_bwd") && k["calls"] == 1.0
        }),
        "{kernels:?}"
    );
    assert!(kernels.iter().all(|k| k["ms"].as_f64().unwrap() > 0.0));

    let out = signflow(&["bench", "--device", "cpu", "--memory-rows", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory-rows"));
}

#[test]
fn bad_memory_fraction_is_a_readable_error() {
    let out = signflow(&["selftest", "--device", "cpu", "--memory-fraction", "1.5"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("memory_fraction = 1.5 is out of range"),
        "{err}"
    );
}

#[test]
fn selftest_json_on_the_cpu() {
    let out = signflow(&["selftest", "--device", "cpu", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is JSON alone");
    let rows = rows.as_array().unwrap();
    assert!(rows.iter().all(|r| r["pass"] == true));
    for op in ["matmul", "add", "scale", "cast", "copy"] {
        assert!(rows.iter().any(|r| r["op"] == op), "{op} missing");
    }
    for field in [
        "op",
        "dtype",
        "shape",
        "max_abs_err",
        "max_rel_err",
        "tol",
        "pass",
    ] {
        assert!(rows[0].get(field).is_some(), "{field}");
    }
}

#[test]
fn selftest_on_the_software_adapter() {
    let out = signflow(&["selftest", "--device", "gpu:0", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
