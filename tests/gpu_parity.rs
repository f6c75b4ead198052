//! The wgpu backend against the f64 reference, on the best adapter there is (on a machine
//! without a GPU, Mesa's software Vulkan driver). No adapter at all is a failure, not a skip:
//! install mesa-vulkan-drivers.

mod common;

use signflow::backend::gpu::kernel_config::MatmulTile;
use signflow::selftest::{self, Inputs};
use signflow::{Adapters, GpuBackend, GpuConfig, MatmulSpec};

fn gpu() -> GpuBackend {
    let adapters = Adapters::discover();
    let (adapter, info) = adapters.adapter(0).expect(
        "no GPU adapter at all: the GPU tests need one (on a machine without a GPU, install \
         Mesa's software Vulkan driver: apt-get install -y mesa-vulkan-drivers)",
    );
    eprintln!("adapter: {} ({})", info.name, info.backend);
    GpuBackend::new(adapter, info.clone(), &GpuConfig::default()).expect("the adapter opens")
}

common::backend_suite!(gpu());

/// Every tile the adapter supports, in every layout, with scalar and vec4 loads, at sizes
/// that cut the tiles' edges.
#[test]
fn matmul_every_tile_layout_and_loader() {
    let mut b = gpu();
    let seed = common::seed();
    let mut inputs = Inputs::new(seed);
    let tiles: Vec<MatmulTile> = b.kernel_config().matmul_tiles.clone();
    assert!(!tiles.is_empty());
    for tile in tiles {
        b.kernel_config_mut().forced_matmul_tile = Some(tile);
        // (m, n, k): odd sizes take scalar loads; multiples of 4 take vec4 loads.
        for (m, n, k) in [
            (tile.bm as usize + 3, tile.bn as usize - 1, 37),
            (tile.bm as usize + 4, 2 * tile.bn as usize + 4, 20),
        ] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let spec = MatmulSpec::new(m, n, k).transpose(ta, tb);
                let row = selftest::check_matmul(&b, &spec, ta, &mut inputs).unwrap();
                assert!(row.pass, "seed {seed}, tile {tile:?}: {row:?}");
            }
        }
    }
}

#[test]
fn memory_budget_is_an_error_not_a_crash() {
    use signflow::Backend;
    let adapters = Adapters::discover();
    let (adapter, info) = adapters.adapter(0).expect("an adapter");
    let config = GpuConfig {
        memory_limit_mb: Some(1),
        ..GpuConfig::default()
    };
    let b = GpuBackend::new(adapter, info.clone(), &config).unwrap();
    let small = b.alloc(&[1000], signflow::DType::F32).unwrap();
    let err = b
        .alloc(&[1 << 20], signflow::DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("out of memory") && err.contains("[1048576]"),
        "{err}"
    );
    assert_eq!(b.memory_stats().budget_bytes, Some(1 << 20));
    assert!(b.memory_stats().allocated_bytes >= 4000);
    drop(small);
    {
        let _guard = b.memory_guard();
        drop(b.alloc(&[1000], signflow::DType::F32).unwrap());
        assert!(b.memory_stats().reserved_bytes > 0);
    }
    assert_eq!(
        b.memory_stats().reserved_bytes,
        0,
        "the guard emptied the cache"
    );
}
