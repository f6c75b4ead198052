//! Cooperative matrices (tensor cores), which the software adapter here lacks: their kernels
//! checked with naga; the check on opening an adapter forced on it, with stand-ins for the
//! cooperative product; the switch; the precision an adapter without SHADER_F16 runs.

mod cli_support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use naga::back::{msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use signflow::backend::gpu::shaders::Kernel;
use signflow::backend::gpu::CoopProduct;
use signflow::{
    Adapters, Backend, CoopMatrix, DType, DeviceInfo, GpuBackend, GpuConfig, MatmulSpec, Tensor,
};

fn coop_kernels() -> Vec<Kernel> {
    Kernel::all()
        .into_iter()
        .filter(|k| matches!(k, Kernel::MatmulCoop(_)))
        .collect()
}

#[test]
fn coop_variants_cover_every_layout_and_epilogue() {
    let names: Vec<String> = coop_kernels().iter().map(Kernel::name).collect();
    for layout in ["nn", "nt", "tn", "tt"] {
        for out in ["f16", "f32"] {
            let name = format!("matmul_coop_{layout}_{out}_biasf32");
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let gelu = format!("matmul_coop_{layout}_f16_biasf16_gelu");
        assert!(names.contains(&gelu), "{gelu} missing from {names:?}");
    }
}

/// Every variant needs the cooperative-matrix capability, validates with it, and translates
/// to SPIR-V (Vulkan) and MSL 2.3 (Metal), the backends wgpu runs cooperative matrices on.
#[test]
fn coop_variants_validate_and_translate_to_spirv_and_msl() {
    let kernels = coop_kernels();
    assert!(!kernels.is_empty());
    for kernel in kernels {
        let name = kernel.name();
        let source = kernel.source();
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{name}:\n{}", e.emit_to_string(&source)));
        let without = Capabilities::all() - Capabilities::COOPERATIVE_MATRIX;
        assert!(
            Validator::new(ValidationFlags::all(), without)
                .validate(&module)
                .is_err(),
            "{name} validates without cooperative matrices"
        );
        let info = Validator::new(ValidationFlags::all(), spv::supported_capabilities())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}:\n{}", e.emit_to_string(&source)));
        let words = spv::write_vec(&module, &info, &spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{name} to SPIR-V: {e}"));
        assert!(!words.is_empty());
        let info = Validator::new(ValidationFlags::all(), msl::supported_capabilities())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}:\n{}", e.emit_to_string(&source)));
        let options = msl::Options {
            lang_version: (2, 3),
            ..Default::default()
        };
        let (msl, _) =
            msl::write_string(&module, &info, &options, &msl::PipelineOptions::default())
                .unwrap_or_else(|e| panic!("{name} to MSL: {e}"));
        assert!(msl.contains("simdgroup_multiply_accumulate"), "{name}");
    }
}

fn gpu(coop: CoopMatrix) -> GpuBackend {
    let adapters = Adapters::discover();
    let (adapter, info) = adapters
        .adapter(0)
        .expect("no GPU adapter (install mesa-vulkan-drivers)");
    let config = GpuConfig {
        cooperative_matrix: coop,
        ..GpuConfig::default()
    };
    GpuBackend::new(adapter, info.clone(), &config).unwrap()
}

/// Log lines written while `f` runs on this thread.
fn logged<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    (result, text)
}

/// A stand-in for the cooperative product that computes it right: the tiled product of the
/// operands widened to f32, scaled by `factor`.
fn tiled_times(
    factor: f32,
) -> impl Fn(
    &GpuBackend,
    &Tensor<GpuBackend>,
    &Tensor<GpuBackend>,
    &Tensor<GpuBackend>,
    &MatmulSpec,
) -> signflow::Result<()> {
    move |gpu, a, b, out, spec| {
        let a32 = gpu.alloc(a.shape(), DType::F32)?;
        let b32 = gpu.alloc(b.shape(), DType::F32)?;
        gpu.cast(a, &a32)?;
        gpu.cast(b, &b32)?;
        gpu.matmul(&a32, &b32, None, out, spec)?;
        gpu.scale(out, factor, out)
    }
}

/// What the check on opening the adapter decides with `product` standing in for the
/// cooperative product on an adapter pretending to have them, and what it logged.
fn forced_check(product: &CoopProduct) -> (bool, bool, String) {
    let mut gpu = gpu(CoopMatrix::Auto);
    gpu.kernel_config_mut().coop_matrix = true;
    let (kept, log) = logged(|| gpu.check_coop_matrix_with(product));
    // The check leaves the memory statistics as a freshly opened device has them.
    let stats = gpu.memory_stats();
    assert_eq!((stats.reserved_bytes, stats.peak_allocated_bytes), (0, 0));
    (kept, gpu.kernel_config().coop_matrix, log)
}

#[test]
fn the_check_keeps_a_product_within_the_f16_tolerance() {
    let (kept, on, log) = forced_check(&tiled_times(1.0));
    assert!(kept && on, "{log}");
    assert!(!log.contains("WARN"), "{log}");
}

#[test]
fn the_check_turns_a_wrong_product_off_with_one_warning() {
    // 1 % off: beyond the f16 tolerance of a 45-term sum, well above rounding.
    let (kept, on, log) = forced_check(&tiled_times(1.01));
    assert!(!kept && !on, "{log}");
    let adapter = Adapters::discover().adapter(0).unwrap().1.name.clone();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains(&adapter), "{log}");
    assert!(warnings[0].contains("beyond the f16 tolerance"), "{log}");
}

#[test]
fn the_check_turns_a_failing_product_off_and_names_the_error() {
    let fails = |gpu: &GpuBackend,
                 a: &Tensor<GpuBackend>,
                 _: &Tensor<GpuBackend>,
                 _: &Tensor<GpuBackend>,
                 _: &MatmulSpec| {
        // What a driver that cannot compile the kernel answers: an error, not a product.
        gpu.cast(a, &gpu.alloc(&[1], DType::F32)?)
    };
    let (kept, on, log) = forced_check(&fails);
    assert!(!kept && !on, "{log}");
    assert!(log.contains("WARN") && log.contains("cast"), "{log}");
}

/// On the software adapter (no cooperative matrices) `auto` and `off` both leave the f16
/// products to the tiled kernels, and a real check of the cooperative kernel, forced there,
/// fails and switches it off rather than running it.
#[test]
fn without_cooperative_matrices_the_tiled_kernels_run() {
    let info = Adapters::discover().adapter(0).unwrap().1.clone();
    assert!(info.cooperative_matrix.is_empty(), "{info:?}");
    for coop in [CoopMatrix::Auto, CoopMatrix::Off] {
        assert!(!gpu(coop).kernel_config().coop_matrix, "{coop:?}");
    }
    let (kept, on, log) = forced_check(&signflow::backend::gpu::coop_matrix_product);
    assert!(!kept && !on, "{log}");
}

fn fake_adapter(name: &str, features: wgpu::Features) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        precisions: signflow::device::adapter_precisions(features),
        ..DeviceInfo::cpu()
    }
}

#[test]
fn f16_without_shader_f16_runs_bf16_and_says_so_once() {
    let without = fake_adapter("adapter without f16", wgpu::Features::empty());
    let with = fake_adapter("adapter with f16", wgpu::Features::SHADER_F16);
    let (runs, log) = logged(|| {
        [
            signflow::device::precision_that_runs(DType::F16, &without),
            signflow::device::precision_that_runs(DType::F16, &without),
            signflow::device::precision_that_runs(DType::F16, &with),
            signflow::device::precision_that_runs(DType::Bf16, &without),
        ]
    });
    assert_eq!(runs, [DType::Bf16, DType::Bf16, DType::F16, DType::Bf16]);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("adapter without f16"), "{log}");
    assert!(warnings[0].contains("bf16"), "{log}");
}

#[test]
fn devices_json_gives_precisions_and_cooperative_matrices() {
    let out = cli_support::ok(&["devices", "--json"]);
    let devices: serde_json::Value = serde_json::from_str(&out).unwrap();
    let devices = devices.as_array().unwrap();
    assert_eq!(
        devices[0]["precisions"],
        serde_json::json!(["f32", "f16", "bf16"])
    );
    assert_eq!(devices[0]["cooperative_matrix"], serde_json::json!([]));
    let adapters = Adapters::discover();
    for (i, d) in devices[1..].iter().enumerate() {
        let info = adapters.adapter(i).unwrap().1;
        let precisions: Vec<&str> = info.precisions.iter().map(|p| p.name()).collect();
        assert_eq!(d["precisions"], serde_json::json!(precisions), "{d}");
        let f16 = info.features.iter().any(|f| f == "SHADER_F16");
        assert_eq!(precisions.contains(&"f16"), f16, "{d}");
        assert!(d["cooperative_matrix"].is_array(), "{d}");
    }
}

#[test]
fn coop_matrix_flag_goes_with_the_device_flag() {
    let out = cli_support::signflow(&["profile", "--coop-matrix", "sometimes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("auto") && err.contains("off"),
        "{err}"
    );
    let out = cli_support::signflow(&["devices", "--coop-matrix", "off"]);
    assert!(!out.status.success());
    for command in [
        "selftest", "bench", "demo", "train", "eval", "predict", "profile",
    ] {
        let help = cli_support::ok(&[command, "--help"]);
        assert!(help.contains("--coop-matrix"), "{command}: {help}");
    }
}
