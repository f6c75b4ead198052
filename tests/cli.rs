//! The command line: JSON outputs, readable errors for bad devices, the demo and its sample.

mod cli_support;
use cli_support::signflow;

use std::path::Path;
use std::process::Command;

use signflow::data::ClipPack;

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

/// The demo trains on the sample of real signing it carries and reports on the held-out signer.
#[test]
fn demo_trains_on_real_signing_and_reports_the_held_out_signer() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo");
    let out = signflow(&[
        "demo",
        "--device",
        "cpu",
        "--skip-selftest",
        "--epochs",
        "1",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("real signing: 320 clips of 8 signs"), "{err}");
    assert!(err.contains("`TheCamNelson` held out"), "{err}");
    assert!(!err.contains("GENERATED"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("held-out signer TheCamNelson: top-1 ")
            && lines[0].contains("top-5")
            && lines[0].contains("on 160 clips"),
        "{stdout}"
    );
    let predictions = lines
        .iter()
        .filter(|l| l.starts_with("held-out clip "))
        .count();
    assert_eq!(predictions, 8, "one held-out clip of each sign: {stdout}");
    assert!(
        lines[2..]
            .iter()
            .all(|l| l.contains("TheCamNelson signing")),
        "{stdout}"
    );
    // The sample is left beside the run, to train on with `signflow train`.
    let sample = ClipPack::load(out_dir.join("real-clips.safetensors")).unwrap();
    assert_eq!(sample.group_names, ["dmohazab", "TheCamNelson"]);
    let license = std::fs::read_to_string(out_dir.join("LICENSE")).unwrap();
    assert!(
        license.contains("Copyright (c) 2022 traduttore"),
        "{license}"
    );

    let out = signflow(&[
        "demo",
        "--device",
        "cpu",
        "--skip-selftest",
        "--hold-out",
        "Alex",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no group `Alex`") && err.contains("TheCamNelson"),
        "{err}"
    );
}

/// The command that data/demo/README.md gives re-makes data/demo/clips.safetensors.
#[test]
fn demo_sample_is_remade_by_the_command_its_readme_gives() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("data/demo/README.md")).unwrap();
    let command = readme
        .lines()
        .find(|l| l.starts_with("signflow data subset "))
        .expect("the README gives the command");
    let mut args = shell_words(command);
    assert_eq!(args.remove(0), "signflow");
    let dir = tempfile::tempdir().unwrap();
    let remade = dir.path().join("clips.safetensors");
    let o = args.iter().position(|a| a == "-o").expect("an -o argument") + 1;
    assert_eq!(args[o], "data/demo/clips.safetensors");
    args[o] = remade.to_str().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_signflow"))
        .current_dir(root)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = ClipPack::load(root.join("data/demo/clips.safetensors")).unwrap();
    assert!(
        ClipPack::load(&remade).unwrap() == shipped,
        "the remade pack differs"
    );
}

/// Splits a command line at spaces, keeping double-quoted words whole (enough for the README).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[test]
fn data_subset_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("synth.safetensors");
    let out = signflow(&[
        "data",
        "synth",
        "--classes",
        "2",
        "--clips",
        "4",
        "-o",
        pack.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sub = dir.path().join("sub.safetensors");
    let subset = |extra: &[&str]| {
        let mut args = vec![
            "data",
            "subset",
            pack.to_str().unwrap(),
            "-o",
            sub.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        signflow(&args)
    };
    let out = subset(&["--classes", "sign-01", "--clips", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = ClipPack::load(&sub).unwrap();
    assert_eq!(
        (written.len(), written.classes.len()),
        (2, 1),
        "one clip from each signer"
    );
    let out = subset(&["--classes", "hello"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("sign-00, sign-01"),
        "{err}"
    );
    let out = subset(&["--classes", "sign-00", "--clips", "0"]);
    assert!(!out.status.success());
}
