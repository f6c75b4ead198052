//! Choose a device, print what it is, multiply two matrices on it and check the result.
//!
//! cargo run --release --example matmul -- [DEVICE]     (DEVICE: auto, cpu, gpu, vulkan, ...)

use signflow::{
    with_backend, AnyBackend, Backend, DType, GpuConfig, HostTensor, MatmulSpec, ToDevice,
};

fn main() -> signflow::Result<()> {
    let config = GpuConfig {
        device: std::env::args().nth(1).unwrap_or_else(|| "auto".into()),
        ..GpuConfig::default()
    };
    let device = AnyBackend::open(&config)?;
    with_backend!(&device, b => {
        let info = b.info();
        println!("{} ({}, {}), memory: {:?} bytes", info.name, info.backend, info.device_type, info.memory_bytes);
        let (m, n, k) = (3, 2, 4);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
        let w: Vec<f32> = (0..k * n).map(|i| 1.0 - i as f32 / 4.0).collect();
        let a = HostTensor::from_f32(&[m, k], a)?.to_device(b)?;
        let w = HostTensor::from_f32(&[k, n], w)?.to_device(b)?;
        let bias = HostTensor::from_f32(&[n], vec![0.5, -0.5])?.to_device(b)?;
        let c = b.alloc(&[m, n], DType::F32)?;
        b.matmul(&a, &w, Some(&bias), &c, &MatmulSpec::new(m, n, k))?;
        println!("C = A·W + bias = {:?}", c.to_f32_vec()?);
        println!("memory: {:?}", b.memory_stats());
    });
    Ok(())
}
