//! What half-precision storage does to the CPU backend's speed and memory: the matrix product
//! at three sizes, attention forward + backward and layer norm forward + backward, each in
//! f32, f16 and bf16, in alternating rounds (BENCHMARKS.md); and, beside the products, gemm's
//! own f16 product (`gemm::gemm` on f16 operands), which the backend does not use.
//!
//! cargo run --release --example half_cpu -- [ROUNDS]

use std::time::Instant;

use signflow::backend::AttentionSpec;
use signflow::selftest::Inputs;
use signflow::{Backend, CpuBackend, DType, DropoutKey, HostTensor, MatmulSpec, Tensor};

type Run<'a> = Box<dyn FnMut() + 'a>;

/// One way to run a case: its name, the bytes of the tensors it reads and writes, and the run.
struct Variant<'a> {
    name: String,
    bytes: u64,
    run: Run<'a>,
}

fn tensor(b: &CpuBackend, inputs: &mut Inputs, len: usize, dtype: DType) -> Tensor<CpuBackend> {
    let host = HostTensor::from_f32_as(&[len], &inputs.uniform(len), dtype).unwrap();
    b.upload(&host).unwrap()
}

fn bytes(tensors: &[&Tensor<CpuBackend>]) -> u64 {
    tensors
        .iter()
        .map(|t| (t.len() * t.dtype().size_bytes()) as u64)
        .sum()
}

fn matmul_variants<'a>(
    b: &'a CpuBackend,
    inputs: &mut Inputs,
    spec: MatmulSpec,
) -> Vec<Variant<'a>> {
    let mut variants: Vec<Variant<'a>> = DType::ALL
        .iter()
        .map(|&dtype| {
            let a = tensor(b, inputs, spec.a_len(), dtype);
            let w = tensor(b, inputs, spec.b_len(), dtype);
            let out = b.alloc(&[spec.c_len()], dtype).unwrap();
            Variant {
                name: dtype.name().to_string(),
                bytes: bytes(&[&a, &w, &out]),
                run: Box::new(move || b.matmul(&a, &w, None, &out, &spec).unwrap()),
            }
        })
        .collect();
    let f16s = |inputs: &mut Inputs, len: usize| -> Vec<gemm::f16> {
        inputs
            .uniform(len)
            .into_iter()
            .map(gemm::f16::from_f32)
            .collect()
    };
    let (a, w) = (f16s(inputs, spec.a_len()), f16s(inputs, spec.b_len()));
    let mut c = vec![gemm::f16::ZERO; spec.c_len()];
    let MatmulSpec { m, n, k, .. } = spec;
    let threads = rayon::current_num_threads();
    variants.push(Variant {
        name: "f16 by gemm".into(),
        bytes: 2 * (a.len() + w.len() + c.len()) as u64,
        run: Box::new(move || {
            // SAFETY: a is m×k, w k×n and c m×n, row-major, as the strides say.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    1,
                    n as isize,
                    gemm::f16::ZERO,
                    gemm::f16::ONE,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                )
            }
        }),
    });
    variants
}

fn attention_variants<'a>(
    b: &'a CpuBackend,
    inputs: &mut Inputs,
    spec: AttentionSpec,
) -> Vec<Variant<'a>> {
    let (bt, dm) = (spec.batch * spec.seq, spec.d_model());
    let mask = b
        .upload(&HostTensor::filled(&[bt], DType::F32, 1.0))
        .unwrap();
    DType::ALL
        .iter()
        .map(|&dtype| {
            let qkv = tensor(b, inputs, bt * 3 * dm, dtype);
            let dout = tensor(b, inputs, bt * dm, dtype);
            let (out, dqkv) = (
                b.alloc(&[bt * dm], dtype).unwrap(),
                b.alloc(&[bt * 3 * dm], dtype).unwrap(),
            );
            let lse = b
                .alloc(&[spec.batch * spec.heads * spec.seq], DType::F32)
                .unwrap();
            let mask = mask.clone();
            Variant {
                name: dtype.name().to_string(),
                bytes: bytes(&[&qkv, &dout, &out, &dqkv, &lse]),
                run: Box::new(move || {
                    b.attention(&qkv, &mask, &spec, &out, &lse).unwrap();
                    b.attention_backward(&qkv, &mask, &spec, &out, &lse, &dout, &dqkv)
                        .unwrap();
                }),
            }
        })
        .collect()
}

fn layernorm_variants<'a>(
    b: &'a CpuBackend,
    inputs: &mut Inputs,
    rows: usize,
    cols: usize,
) -> Vec<Variant<'a>> {
    let w = tensor(b, inputs, cols, DType::F32);
    DType::ALL
        .iter()
        .map(|&dtype| {
            let x = tensor(b, inputs, rows * cols, dtype);
            let dy = tensor(b, inputs, rows * cols, dtype);
            let (y, dx) = (
                b.alloc(&[rows * cols], dtype).unwrap(),
                b.alloc(&[rows * cols], dtype).unwrap(),
            );
            let stats = || b.alloc(&[rows], DType::F32).unwrap();
            let (mean, rstd) = (stats(), stats());
            let grads = || b.alloc(&[cols], DType::F32).unwrap();
            let (dw, db) = (grads(), grads());
            let w = w.clone();
            Variant {
                name: dtype.name().to_string(),
                bytes: bytes(&[&x, &dy, &y, &dx, &mean, &rstd]),
                run: Box::new(move || {
                    b.layernorm(&x, &w, &w, 1e-5, &y, &mean, &rstd).unwrap();
                    b.layernorm_backward(&x, &w, &mean, &rstd, &dy, &dx, &dw, &db)
                        .unwrap();
                }),
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per round, each variant's mean time a call over about 0.2 s (at least 3 calls), the
/// variants one after another, in reverse order every other round (the first to run after
/// another case may be slowed); then each variant's median over the rounds.
fn measure(case: &str, mut variants: Vec<Variant<'_>>, rounds: usize) {
    let calls: Vec<usize> = variants
        .iter_mut()
        .map(|v| {
            (v.run)();
            let start = Instant::now();
            (v.run)();
            (0.2 / start.elapsed().as_secs_f64()).clamp(3.0, 1000.0) as usize
        })
        .collect();
    let mut samples = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        let mut order: Vec<_> = variants.iter_mut().zip(&calls).zip(&mut samples).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for ((v, &n), s) in order {
            let start = Instant::now();
            for _ in 0..n {
                (v.run)();
            }
            s.push(start.elapsed().as_secs_f64() * 1e3 / n as f64);
        }
    }
    let base = median(samples[0].clone());
    for (v, s) in variants.iter().zip(samples) {
        let (lo, hi) = s
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let ms = median(s);
        println!(
            "| {case} | {} | {ms:.3} ms ({lo:.3}–{hi:.3}) | {:.2}× | {:.1} MiB |",
            v.name,
            ms / base,
            v.bytes as f64 / (1 << 20) as f64
        );
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(7, |r| r.parse().expect("ROUNDS"));
    let b = CpuBackend::default();
    let mut inputs = Inputs::new(7);
    println!(
        "| case | dtype | median a call (range over {rounds} rounds) | against f32 | tensors |"
    );
    println!("|---|---|---|---|---|");
    for (m, n, k) in [(64, 1024, 256), (2048, 1024, 256), (1024, 1024, 1024)] {
        let spec = MatmulSpec::new(m, n, k);
        measure(
            &format!("matmul {m}×{n}×{k}"),
            matmul_variants(&b, &mut inputs, spec),
            rounds,
        );
    }
    let mut spec = AttentionSpec::new(32, 64, 8, 32);
    spec.dropout = 0.1;
    spec.key = DropoutKey {
        seed: 1,
        step: 1,
        site: 0,
    };
    measure(
        "attention fwd+bwd 32×64, 8 heads of 32, dropout 0.1",
        attention_variants(&b, &mut inputs, spec),
        rounds,
    );
    measure(
        "layer norm fwd+bwd 2048×1024",
        layernorm_variants(&b, &mut inputs, 2048, 1024),
        rounds,
    );
}
