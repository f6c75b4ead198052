//! Criterion benchmarks of the matrix product on the CPU backend and on the best adapter.
//! `signflow bench` reports the same cases as a table or JSON.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use signflow::selftest::Inputs;
use signflow::{
    Adapters, Backend, CpuBackend, DType, GpuBackend, GpuConfig, HostTensor, MatmulSpec,
};

fn bench_backend<B: Backend>(c: &mut Criterion, b: &B, label: &str, sizes: &[usize]) {
    let mut group = c.benchmark_group(format!("matmul/{label}"));
    let mut inputs = Inputs::new(1);
    for &s in sizes {
        let spec = MatmulSpec::new(s, s, s);
        let x = b
            .upload(&HostTensor::from_f32(&[s, s], inputs.uniform(s * s)).unwrap())
            .unwrap();
        let w = b
            .upload(&HostTensor::from_f32(&[s, s], inputs.uniform(s * s)).unwrap())
            .unwrap();
        let out = b.alloc(&[s, s], DType::F32).unwrap();
        group.throughput(Throughput::Elements(spec.flops() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(s), &s, |bench, _| {
            bench.iter(|| {
                b.matmul(&x, &w, None, &out, &spec).unwrap();
                b.synchronize().unwrap();
            })
        });
    }
    group.finish();
}

fn matmul(c: &mut Criterion) {
    bench_backend(c, &CpuBackend::default(), "cpu", &[256, 512, 1024]);
    let adapters = Adapters::discover();
    if let Some((adapter, info)) = adapters.adapter(0) {
        let gpu = GpuBackend::new(adapter, info.clone(), &GpuConfig::default()).unwrap();
        let sizes: &[usize] = if info.software {
            &[256]
        } else {
            &[256, 1024, 4096]
        };
        bench_backend(c, &gpu, &info.name, sizes);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = matmul
}
criterion_main!(benches);
