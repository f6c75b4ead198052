//! The dropout RNG: Philox4x32-10 against Random123's known answers, the draws' layout and
//! statistics, the WGSL port through naga, and the WGSL port on the first GPU adapter bit for
//! bit against the CPU (on a machine without a GPU, Mesa's software Vulkan driver; as in
//! gpu_parity.rs, no adapter at all is a failure, not a skip). The CPU backend's vector
//! Philox is checked against the same draws in its own unit tests.

use signflow::rng::{keep, philox4x32_10, uniform, DropoutKey};
use wgpu::util::DeviceExt;

/// Random123's kat_vectors for philox4x32_10: (counter, key, expected output).
const KATS: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
    (
        [0, 0, 0, 0],
        [0, 0],
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
    ),
    (
        [0xffffffff; 4],
        [0xffffffff; 2],
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
    ),
    (
        [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
        [0xa4093822, 0x299f31d0],
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    ),
];

/// Every word's high half nonzero, so that a dropped or swapped high word shows.
const KEY: DropoutKey = DropoutKey {
    seed: 0x1234_5678_9abc_def0,
    step: 0xfedc_ba98_7654_3210,
    site: 0xdead_beef,
};

#[test]
fn philox_known_answers() {
    for (counter, key, expected) in KATS {
        assert_eq!(
            philox4x32_10(counter, key),
            expected,
            "counter {counter:08x?} key {key:08x?}"
        );
    }
}

/// The layout of the module doc, spelled out from `philox4x32_10`: element e of tile
/// t = e / 64 takes 16 bits of call 8t + e % 8, output (e % 64) / 16, half (e / 8) % 2.
#[test]
fn draws_follow_the_documented_layout() {
    for e in (0..200u64).chain([(1 << 35) + 77, u64::MAX]) {
        let (t, w) = (e / 64, e % 64);
        let call = 8 * t + w % 8;
        let counter = [
            call as u32,
            KEY.site,
            KEY.step as u32,
            (KEY.step >> 32) as u32,
        ];
        let key = [
            KEY.seed as u32,
            (KEY.seed >> 32) as u32 ^ (call >> 32) as u32,
        ];
        let r = philox4x32_10(counter, key)[(w / 16) as usize];
        let bits = (r >> (16 * ((w / 8) % 2))) & 0xffff;
        assert_eq!(uniform(&KEY, e), bits as f32 / 65_536.0, "element {e}");
    }
}

/// The draws of elements `first .. first + n` under `key`.
fn draws(key: &DropoutKey, first: u64, n: usize) -> Vec<f32> {
    (first..first + n as u64).map(|e| uniform(key, e)).collect()
}

#[test]
fn draws_are_exact_16_bit_fractions_in_unit_interval() {
    for x in draws(&KEY, 0, 10_000) {
        assert!((0.0..1.0).contains(&x), "{x}");
        let scaled = x * 65_536.0;
        assert_eq!(scaled, scaled.trunc(), "{x} is not a multiple of 2^-16");
    }
}

#[test]
fn statistics_and_keep_rate() {
    let n = 100_000;
    let out = draws(&KEY, 0, n);
    let mean = out.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
    // Each quarter of [0, 1) gets its share: a lane or bit-slicing mistake would skew these.
    for q in 0..4 {
        let lo = q as f32 / 4.0;
        let count = out.iter().filter(|&&x| x >= lo && x < lo + 0.25).count();
        let share = count as f64 / n as f64;
        assert!((share - 0.25).abs() < 0.01, "quarter {q}: {share}");
    }
    let p = 0.1;
    let kept = (0..n as u64).filter(|&e| keep(&KEY, e, p)).count();
    let rate = kept as f64 / n as f64;
    assert!((rate - 0.9).abs() < 0.005, "keep rate {rate}");
    // The edges: p = 0 keeps everything, p = 1 nothing (no draw reaches 1.0).
    assert!((0..1000).all(|e| keep(&KEY, e, 0.0)));
    assert!((0..1000).all(|e| !keep(&KEY, e, 1.0)));
}

/// How many of the first `n` draws of `a` and `b` are equal (two independent streams of 16-bit
/// draws match by chance about once in 65,536).
fn equal_draws(a: &DropoutKey, a_first: u64, b: &DropoutKey, b_first: u64, n: usize) -> usize {
    let (x, y) = (draws(a, a_first, n), draws(b, b_first, n));
    x.iter().zip(&y).filter(|(p, q)| p == q).count()
}

#[test]
fn distinct_keys_give_distinct_streams() {
    let n = 4096;
    let variants = [
        DropoutKey {
            site: KEY.site ^ 1,
            ..KEY
        },
        DropoutKey {
            step: KEY.step + 1,
            ..KEY
        },
        DropoutKey {
            step: KEY.step ^ (1 << 40),
            ..KEY
        },
        DropoutKey {
            seed: KEY.seed + 1,
            ..KEY
        },
        DropoutKey {
            seed: KEY.seed ^ (1 << 40),
            ..KEY
        },
    ];
    for other in variants {
        let same = equal_draws(&KEY, 0, &other, 0, n);
        assert!(same <= 2, "{other:?}: {same} of {n} draws equal");
    }
    // Elements 2^35 apart share the counter's low word: the key must tell them apart.
    let same = equal_draws(&KEY, 0, &KEY, 1 << 35, n);
    assert!(same <= 2, "elements 2^35 apart: {same} of {n} draws equal");
    // And neighbouring elements, halves, outputs and tiles within one stream differ.
    for shift in [1, 8, 16, 64] {
        let same = equal_draws(&KEY, 0, &KEY, shift, n);
        assert!(same <= 2, "shifted by {shift}: {same} of {n} draws equal");
    }
}

const PHILOX_WGSL: &str = include_str!("../shaders/philox.wgsl");

/// A test kernel after philox.wgsl: `out[i]` is the bits of the draw of element
/// `params[6] + i` under seed (params[1], params[2]), step (params[3], params[4]), site
/// params[5], for i < n = params[0]; then `out[n + 4j ..]` is philox4x32_10 of the j-th of
/// three (counter, key) sextuples at params[7 + 6j ..].
///
/// It also declares a module-scope `fn element` and `var<...> p`, names the real kernels use,
/// to check that philox.wgsl's parameter names shadow rather than clash when concatenated.
const TEST_KERNEL: &str = r#"
@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

fn element(i: u32) -> u32 {
    return p[6] + i;
}

@compute @workgroup_size(64)
fn rng_test(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let n = p[0];
    if i < n {
        let seed = vec2<u32>(p[1], p[2]);
        let step = vec2<u32>(p[3], p[4]);
        out[i] = bitcast<u32>(dropout_uniform(seed, step, p[5], element(i)));
    }
    if i < 3u {
        let b = 7u + 6u * i;
        let r = philox4x32_10(vec4<u32>(p[b], p[b + 1u], p[b + 2u], p[b + 3u]),
                              vec2<u32>(p[b + 4u], p[b + 5u]));
        for (var j = 0u; j < 4u; j++) {
            out[n + 4u * i + j] = r[j];
        }
    }
}
"#;

fn test_source() -> String {
    format!("{PHILOX_WGSL}\n{TEST_KERNEL}")
}

#[test]
fn wgsl_validates_with_naga() {
    let source = test_source();
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("does not parse:\n{}", e.emit_to_string(&source)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("does not validate:\n{}", e.emit_to_string(&source)));
    // The file itself must stay functions only, or it could not go in front of other kernels.
    let alone = naga::front::wgsl::parse_str(PHILOX_WGSL).expect("philox.wgsl parses alone");
    assert!(alone.entry_points.is_empty() && alone.global_variables.is_empty());
}

/// The kernel's inputs for `n` draws from `first` under `key`, followed by the KAT inputs.
fn params(key: &DropoutKey, first: u32, n: u32) -> Vec<u32> {
    let mut p = vec![
        n,
        key.seed as u32,
        (key.seed >> 32) as u32,
        key.step as u32,
        (key.step >> 32) as u32,
        key.site,
        first,
    ];
    for (counter, k, _) in KATS {
        p.extend(counter);
        p.extend(k);
    }
    p
}

/// Runs TEST_KERNEL once on `device` and reads `out` back.
fn run_kernel(device: &wgpu::Device, queue: &wgpu::Queue, params: &[u32]) -> Vec<u32> {
    let n = params[0];
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("rng_test"),
        source: wgpu::ShaderSource::Wgsl(test_source().into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("rng_test"),
        layout: None,
        module: &module,
        entry_point: Some("rng_test"),
        compilation_options: Default::default(),
        cache: None,
    });
    let input = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("params"),
        contents: bytemuck::cast_slice(params),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let out_bytes = (n as u64 + 12) * 4;
    let output = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("out"),
        size: out_bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: out_bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: input.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: output.as_entire_binding(),
            },
        ],
    });
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("rng_test"),
    });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        // At least one workgroup, so the KAT lanes run even when n == 0.
        pass.dispatch_workgroups(n.div_ceil(64).max(1), 1, 1);
    }
    encoder.copy_buffer_to_buffer(&output, 0, &staging, 0, out_bytes);
    queue.submit([encoder.finish()]);
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("the queue finishes");
    rx.recv().unwrap().expect("the readback maps");
    let view = staging.get_mapped_range(..).expect("the readback maps");
    bytemuck::cast_slice(&view).to_vec()
}

#[test]
fn gpu_matches_cpu_bit_for_bit() {
    let adapters = signflow::Adapters::discover();
    let (adapter, info) = adapters.adapter(0).expect(
        "no GPU adapter at all: the GPU tests need one (on a machine without a GPU, install \
         Mesa's software Vulkan driver: apt-get install -y mesa-vulkan-drivers)",
    );
    eprintln!("adapter: {} ({})", info.name, info.backend);
    // Our own device: the backend's GpuContext is private, and this test needs nothing of it.
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
            .expect("the adapter opens");
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let n = 1000u32;
    // Low elements, and the top of the u32 range (where element >> 2 has its top bits set).
    for first in [0u32, u32::MAX - n + 1] {
        let out = run_kernel(&device, &queue, &params(&KEY, first, n));
        for i in 0..n {
            let e = first as u64 + i as u64;
            assert_eq!(
                out[i as usize],
                uniform(&KEY, e).to_bits(),
                "element {e}: GPU {} CPU {}",
                f32::from_bits(out[i as usize]),
                uniform(&KEY, e)
            );
        }
        for (j, (counter, key, expected)) in KATS.iter().enumerate() {
            let at = n as usize + 4 * j;
            assert_eq!(
                &out[at..at + 4],
                expected,
                "GPU philox4x32_10 on counter {counter:08x?} key {key:08x?}"
            );
        }
    }
    if let Some(e) = pollster::block_on(scope.pop()) {
        panic!("wgpu validation error: {e}");
    }
}
