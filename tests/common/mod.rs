//! The parity suite, generated for one backend by [`backend_suite!`]: every self-test family
//! against the f64 reference with the tests' further cases, and the checks beyond parity.
//! Inputs are fresh on every run; the seed is printed, and named in every failure.

use half::{bf16, f16};
use signflow::selftest::{self, Family, Inputs, ParityRow, Scope};
use signflow::{Backend, DType, HostTensor, MatmulSpec};

/// Every test of the suite for the backend that `$backend` makes (evaluated afresh in each
/// test): one per self-test family, then the checks beyond parity.
macro_rules! backend_suite {
    ($backend:expr) => {
        $crate::common::backend_suite!(@families $backend;
            Matmul => matmul,
            MatmulBiasGelu => matmul_bias_gelu,
            Elementwise => elementwise,
            Gelu => gelu,
            BiasGradAndLayernorm => bias_grad_and_layernorm,
            MeanPool => mean_pool,
            CrossEntropy => cross_entropy,
            Dropout => dropout,
            Attention => attention,
            Optimizer => optimizer,
        );
        $crate::common::backend_suite!(@checks $backend;
            casts_are_exact_at_special_values,
            views_keep_their_neighbours,
            ops_on_views_of_one_arena,
            deterministic,
            bad_operands_are_errors,
            layernorm_rows_alike,
            no_rows,
            reductions_are_deterministic,
            out_of_range_label_is_nan,
            non_finite_logits_are_no_hits,
            attention_edge_cases,
        );
    };
    (@families $backend:expr; $($family:ident => $test:ident,)*) => {
        $(
            #[test]
            fn $test() {
                $crate::common::family_passes(&$backend, signflow::selftest::Family::$family);
            }
        )*

        /// The families above are the self-test's, all of them (a family missing above does
        /// not compile) and in its order.
        #[test]
        fn every_family_is_tested() {
            use signflow::selftest::Family;
            for family in Family::ALL {
                match family {
                    $(Family::$family)|* => {}
                }
            }
            assert_eq!(Family::ALL, [$(Family::$family),*]);
        }
    };
    (@checks $backend:expr; $($check:ident,)*) => {
        $(
            #[test]
            fn $check() {
                $crate::common::$check(&$backend);
            }
        )*
    };
}
pub(crate) use backend_suite;

pub fn seed() -> u64 {
    let seed = Inputs::fresh_seed();
    eprintln!("seed {seed}");
    seed
}

pub fn assert_pass(row: &ParityRow, seed: u64) {
    assert!(row.pass, "seed {seed}: {row:?}");
}

/// Every check of `family` passes, on the self-test's cases and the tests' further ones.
pub fn family_passes<B: Backend>(b: &B, family: Family) {
    let seed = seed();
    let mut inputs = Inputs::new(seed);
    family
        .run(b, Scope::Tests, &mut inputs, &mut |row| {
            assert_pass(&row, seed)
        })
        .unwrap();
}

/// The cross-entropy of `rows` rows of `logits` against `labels`, unsmoothed: the loss, the
/// top-1 and top-5 hits, and each row's log-sum-exp, read from poisoned outputs.
fn cross_entropy_of<B: Backend>(
    b: &B,
    logits: &[f32],
    labels: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = labels.len();
    let up = |data: &[f32], shape: &[usize]| {
        b.upload(&HostTensor::from_f32(shape, data.to_vec()).unwrap())
            .unwrap()
    };
    let (loss, hits, lse) = (
        selftest::poisoned(b, &[1], DType::F32).unwrap(),
        selftest::poisoned(b, &[2], DType::F32).unwrap(),
        selftest::poisoned(b, &[rows], DType::F32).unwrap(),
    );
    let shape = [rows, logits.len() / rows];
    b.cross_entropy(
        &up(logits, &shape),
        &up(labels, &[rows]),
        None,
        0.0,
        &loss,
        &hits,
        &lse,
    )
    .unwrap();
    let read = |t: &signflow::Tensor<B>| t.to_f32_vec().unwrap();
    (read(&loss), read(&hits), read(&lse))
}

/// A label that is not a class index makes the loss NaN rather than reading out of bounds.
pub fn out_of_range_label_is_nan<B: Backend>(b: &B) {
    let (loss, _, lse) = cross_entropy_of(b, &[1.0, 2.0, 3.0, 4.0], &[0.0, 7.0]);
    assert!(loss[0].is_nan());
    assert!(lse.iter().all(|v| v.is_finite()));
}

/// A row with a NaN or an infinite logit is never a top-1 or top-k hit, wherever the
/// non-finite value is; the reference counts alike.
pub fn non_finite_logits_are_no_hits<B: Backend>(b: &B) {
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    #[rustfmt::skip]
    let logits = [
        nan, 0.0, 1.0,
        1.0, nan, 0.0,
        inf, 0.0, 1.0,
        -inf, 0.0, 1.0,
        0.0, 2.0, 1.0,
    ];
    let labels = [0.0, 0.0, 0.0, 2.0, 1.0];
    let (_, hits, _) = cross_entropy_of(b, &logits, &labels);
    assert_eq!(hits, [1.0, 1.0], "only the finite row hits");
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let reference = signflow::reference::cross_entropy(&wide(&logits), &wide(&labels), None, 0.0);
    assert_eq!((reference.top1, reference.top5), (1.0, 1.0));
}

/// Attention over a clip whose keys are all padding, over empty batches and clips, and with
/// bad head sizes; dropout with a bad probability.
pub fn attention_edge_cases<B: Backend>(b: &B) {
    let mut inputs = Inputs::new(seed());
    // A clip whose keys are all padding gives zeros, never NaN.
    let spec = signflow::AttentionSpec::new(1, 3, 1, 4);
    let qkv = b
        .upload(&HostTensor::from_f32(&[1, 3, 12], inputs.uniform(36)).unwrap())
        .unwrap();
    let mask = b
        .upload(&HostTensor::from_f32(&[1, 3], vec![0.0; 3]).unwrap())
        .unwrap();
    let (out, lse) = (
        selftest::poisoned(b, &[1, 3, 4], DType::F32).unwrap(),
        selftest::poisoned(b, &[1, 1, 3], DType::F32).unwrap(),
    );
    b.attention(&qkv, &mask, &spec, &out, &lse).unwrap();
    assert!(out.to_f32_vec().unwrap().iter().all(|&v| v == 0.0));
    assert!(lse
        .to_f32_vec()
        .unwrap()
        .iter()
        .all(|&v| v == signflow::backend::NO_KEYS_LSE));
    let dqkv = selftest::poisoned(b, &[1, 3, 12], DType::F32).unwrap();
    b.attention_backward(&qkv, &mask, &spec, &out, &lse, &out, &dqkv)
        .unwrap();
    assert!(dqkv.to_f32_vec().unwrap().iter().all(|&v| v == 0.0));
    // Empty batches and clips do nothing, and say nothing.
    for (batch, t) in [(0, 5), (2, 0)] {
        let spec = signflow::AttentionSpec::new(batch, t, 2, 8);
        let f = |shape: &[usize]| b.alloc(shape, DType::F32).unwrap();
        let (qkv, mask, out, lse) = (
            f(&[batch, t, 48]),
            f(&[batch, t]),
            f(&[batch, t, 16]),
            f(&[batch, 2, t]),
        );
        b.attention(&qkv, &mask, &spec, &out, &lse).unwrap();
        b.attention_backward(&qkv, &mask, &spec, &out, &lse, &out, &f(&[batch, t, 48]))
            .unwrap();
        let pooled = f(&[batch, 16]);
        b.mean_pool(&f(&[batch, t, 16]), &mask, &pooled).unwrap();
        b.mean_pool_backward(&pooled, &mask, &f(&[batch, t, 16]))
            .unwrap();
    }
    // Bad head sizes and probabilities are errors.
    let too_big = signflow::AttentionSpec::new(1, 3, 1, 129);
    assert!(b.attention(&qkv, &mask, &too_big, &out, &lse).is_err());
    assert!(b
        .dropout(
            &qkv,
            1.5,
            &signflow::DropoutKey {
                seed: 0,
                step: 0,
                site: 0
            },
            &qkv
        )
        .is_err());
}

/// Layer norm gives every copy of one row the same bits, wherever it falls among the rows (the
/// CPU sums a task's first row alone and each later one in the sweep over the row before it).
pub fn layernorm_rows_alike<B: Backend>(b: &B) {
    let seed = seed();
    let mut inputs = Inputs::new(seed);
    // 1024 columns: 32 rows to a CPU task, so 40 rows start two tasks.
    for (rows, cols) in [(40, 1024), (9, 37)] {
        let row = inputs.uniform(cols);
        let x = HostTensor::from_f32(&[rows, cols], row.repeat(rows)).unwrap();
        let (w, bias) = (inputs.uniform(cols), inputs.uniform(cols));
        let param = |v: Vec<f32>| {
            b.upload(&HostTensor::from_f32(&[cols], v).unwrap())
                .unwrap()
        };
        let (w, bias) = (param(w), param(bias));
        let y = b.alloc(&[rows, cols], DType::F32).unwrap();
        let (mean, rstd) = (
            b.alloc(&[rows], DType::F32).unwrap(),
            b.alloc(&[rows], DType::F32).unwrap(),
        );
        b.layernorm(&b.upload(&x).unwrap(), &w, &bias, 1e-5, &y, &mean, &rstd)
            .unwrap();
        let bits = |t: &signflow::Tensor<B>| -> Vec<u32> {
            t.to_f32_vec()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        let (y, mean, rstd) = (bits(&y), bits(&mean), bits(&rstd));
        for r in 1..rows {
            assert_eq!(
                (&y[r * cols..(r + 1) * cols], mean[r], rstd[r]),
                (&y[..cols], mean[0], rstd[0]),
                "seed {seed}: row {r} of {rows} × {cols} differs from row 0"
            );
        }
    }
}

/// Tensors with no rows: the parameter gradients are sums over nothing, zeros (not a panic,
/// and not the output's old contents).
pub fn no_rows<B: Backend>(b: &B) {
    let cols = 5;
    let empty = |shape: &[usize]| b.alloc(shape, DType::F32).unwrap();
    let ones = b
        .upload(&HostTensor::filled(&[cols], DType::F32, 1.0))
        .unwrap();
    let sevens = |t: &signflow::Tensor<B>| b.scale(&ones, 7.0, t).unwrap();
    let (dw, db) = (empty(&[cols]), empty(&[cols]));
    sevens(&db);
    b.bias_grad(&empty(&[0, cols]), &db).unwrap();
    assert_eq!(db.to_f32_vec().unwrap(), vec![0.0; cols], "bias_grad");
    let (x, dy, dx) = (empty(&[0, cols]), empty(&[0, cols]), empty(&[0, cols]));
    let (mean, rstd) = (empty(&[0]), empty(&[0]));
    sevens(&dw);
    sevens(&db);
    b.layernorm_backward(&x, &ones, &mean, &rstd, &dy, &dx, &dw, &db)
        .unwrap();
    assert_eq!(dw.to_f32_vec().unwrap(), vec![0.0; cols], "layernorm dw");
    assert_eq!(db.to_f32_vec().unwrap(), vec![0.0; cols], "layernorm db");
}

/// Reductions give the same bits on two runs.
pub fn reductions_are_deterministic<B: Backend>(b: &B) {
    let mut inputs = Inputs::new(seed());
    let (rows, cols) = (300, 77);
    let up = |data: Vec<f32>, shape: &[usize]| {
        b.upload(&HostTensor::from_f32(shape, data).unwrap())
            .unwrap()
    };
    let x = up(inputs.uniform(rows * cols), &[rows, cols]);
    let dy = up(inputs.uniform(rows * cols), &[rows, cols]);
    let w = up(inputs.uniform(cols), &[cols]);
    let run = || {
        let f = |shape: &[usize]| selftest::poisoned(b, shape, DType::F32).unwrap();
        let (y, mean, rstd, dx, dw, db, bias) = (
            f(&[rows, cols]),
            f(&[rows]),
            f(&[rows]),
            f(&[rows, cols]),
            f(&[cols]),
            f(&[cols]),
            f(&[cols]),
        );
        b.layernorm(&x, &w, &w, 1e-5, &y, &mean, &rstd).unwrap();
        b.layernorm_backward(&x, &w, &mean, &rstd, &dy, &dx, &dw, &db)
            .unwrap();
        b.bias_grad(&dy, &bias).unwrap();
        let (norm, loss, hits, lse) = (f(&[1]), f(&[1]), f(&[2]), f(&[rows]));
        b.grad_norm(&dy, &norm).unwrap();
        let labels = b
            .upload(
                &HostTensor::from_f32(&[rows], (0..rows).map(|i| (i % cols) as f32).collect())
                    .unwrap(),
            )
            .unwrap();
        b.cross_entropy(&x, &labels, None, 0.1, &loss, &hits, &lse)
            .unwrap();
        let mut spec = signflow::AttentionSpec::new(2, 75, 2, 32);
        spec.dropout = 0.1;
        let qkv_data = (0..2 * 75 * 192)
            .map(|i| ((i * 7919) % 113) as f32 / 113.0 - 0.5)
            .collect();
        let qkv = b
            .upload(&HostTensor::from_f32(&[2, 75, 192], qkv_data).unwrap())
            .unwrap();
        let mask = b
            .upload(&HostTensor::from_f32(&[2, 75], selftest::ragged_mask(2, 75, false)).unwrap())
            .unwrap();
        let (att, att_lse, dqkv) = (f(&[2, 75, 64]), f(&[2, 2, 75]), f(&[2, 75, 192]));
        b.attention(&qkv, &mask, &spec, &att, &att_lse).unwrap();
        b.attention_backward(&qkv, &mask, &spec, &att, &att_lse, &att, &dqkv)
            .unwrap();
        [
            y, mean, rstd, dx, dw, db, bias, norm, loss, lse, att, att_lse, dqkv,
        ]
        .map(|t| {
            t.to_f32_vec()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(run(), run());
}

/// Casts of the values where rounding is delicate, compared bit for bit with the `half`
/// crate (IEEE round to nearest even).
pub fn casts_are_exact_at_special_values<B: Backend>(b: &B) {
    let specials: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65519.9,
        65520.0,
        -70000.0,
        1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        6.1e-5,
        6.0e-5,
        5.96e-8,
        2.98e-8,
        2.99e-8,
        1e-10,
        -3.3e-7,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        1.0 + 1.0 / 256.0,
        3.0e38,
        1.17e-38,
        f32::MIN_POSITIVE / 2.0,
        0.1,
        -0.3333,
    ];
    let n = specials.len();
    let x = b
        .upload(&HostTensor::from_f32(&[n], specials.clone()).unwrap())
        .unwrap();
    let to_f16 = selftest::poisoned(b, &[n], DType::F16).unwrap();
    let to_bf16 = selftest::poisoned(b, &[n], DType::Bf16).unwrap();
    b.cast(&x, &to_f16).unwrap();
    b.cast(&x, &to_bf16).unwrap();
    let got_f16 = to_f16.to_host().unwrap();
    let got_bf16 = to_bf16.to_host().unwrap();
    let (signflow::tensor::HostData::F16(h), signflow::tensor::HostData::Bf16(bh)) =
        (got_f16.data(), got_bf16.data())
    else {
        panic!("cast produced the wrong dtype");
    };
    for (i, &v) in specials.iter().enumerate() {
        let (want_h, want_b) = (f16::from_f32(v), bf16::from_f32(v));
        if v.is_nan() {
            assert!(h[i].is_nan() && bh[i].is_nan(), "NaN stays NaN");
        } else {
            assert_eq!(
                h[i].to_bits(),
                want_h.to_bits(),
                "f16 of {v:e}: got {}, want {}",
                h[i],
                want_h
            );
            assert_eq!(
                bh[i].to_bits(),
                want_b.to_bits(),
                "bf16 of {v:e}: got {}, want {}",
                bh[i],
                want_b
            );
        }
    }
    // And back: every f16 and bf16 bit pattern widens exactly.
    let all: Vec<u16> = (0..=u16::MAX).collect();
    for dtype in [DType::F16, DType::Bf16] {
        let data = match dtype {
            DType::F16 => {
                signflow::tensor::HostData::F16(all.iter().map(|&b| f16::from_bits(b)).collect())
            }
            _ => {
                signflow::tensor::HostData::Bf16(all.iter().map(|&b| bf16::from_bits(b)).collect())
            }
        };
        let src = HostTensor::new(&[all.len()], data).unwrap();
        let wide = selftest::poisoned(b, &[all.len()], DType::F32).unwrap();
        b.cast(&b.upload(&src).unwrap(), &wide).unwrap();
        let got = wide.to_f32_vec().unwrap();
        for (g, w) in got.iter().zip(src.to_f32_vec()) {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{dtype} widening: {g} vs {w}"
            );
        }
    }
}

/// Writes, casts and copies into views leave the elements around them alone, including the
/// other half of a shared 32-bit word.
pub fn views_keep_their_neighbours<B: Backend>(b: &B) {
    for dtype in DType::ALL {
        let arena = selftest::poisoned(b, &[16], dtype).unwrap();
        let view = arena.view(2, &[5]).unwrap();
        let values = [1.0, 2.0, 3.0, 4.0, 5.0];
        b.write(
            &view,
            &HostTensor::from_f32_as(&[5], &values, dtype).unwrap(),
        )
        .unwrap();
        let other = arena.view(8, &[3]).unwrap();
        b.copy(
            &b.upload(&HostTensor::from_f32_as(&[3], &[7.0, 8.0, 9.0], dtype).unwrap())
                .unwrap(),
            &other,
        )
        .unwrap();
        let got = arena.to_f32_vec().unwrap();
        for (i, g) in got.iter().enumerate() {
            match i {
                2..=6 => assert_eq!(*g, values[i - 2], "{dtype} element {i}"),
                8..=10 => assert_eq!(*g, [7.0, 8.0, 9.0][i - 8], "{dtype} element {i}"),
                _ => assert!(
                    g.is_nan(),
                    "{dtype}: element {i} outside the views was overwritten with {g}"
                ),
            }
        }
    }
    assert!(
        b.upload(&HostTensor::filled(&[4], DType::F16, 0.0))
            .unwrap()
            .view(1, &[2])
            .is_err(),
        "odd 16-bit view"
    );
}

/// Products whose operands are views into one arena, at offsets that do and do not allow
/// vec4 loads, and an in-place add.
pub fn ops_on_views_of_one_arena<B: Backend>(b: &B) {
    let seed = seed();
    let mut inputs = Inputs::new(seed);
    for (offset_a, offset_b) in [(0, 64), (1, 70), (4, 128)] {
        let (m, n, k) = (9, 8, 12);
        let spec = MatmulSpec::new(m, n, k);
        let arena_data = inputs.uniform(320);
        let arena = b
            .upload(&HostTensor::from_f32(&[320], arena_data.clone()).unwrap())
            .unwrap();
        let a = arena.view(offset_a, &[m * k]).unwrap();
        let w = arena.view(offset_b, &[k * n]).unwrap();
        let out = selftest::poisoned(b, &[m * n], DType::F32).unwrap();
        b.matmul(&a, &w, None, &out, &spec).unwrap();
        let widen = |s: &[f32]| s.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let want = signflow::reference::matmul(
            &widen(&arena_data[offset_a..offset_a + m * k]),
            &widen(&arena_data[offset_b..offset_b + k * n]),
            None,
            &spec,
        );
        let d = signflow::tolerance::Deviation::measure(&out.to_f32_vec().unwrap(), &want);
        assert!(
            d.within(1e-4),
            "seed {seed}: offsets {offset_a},{offset_b}: {d:?}"
        );
        // The output may live in the same arena as the inputs, apart from them.
        let out_in_arena = arena.view(240, &[m * n]).unwrap();
        b.matmul(&a, &w, None, &out_in_arena, &spec).unwrap();
        let d = signflow::tolerance::Deviation::measure(&out_in_arena.to_f32_vec().unwrap(), &want);
        assert!(d.within(1e-4), "seed {seed}: output in the arena: {d:?}");
    }
    let x = inputs.uniform(33);
    let y = inputs.uniform(33);
    let tx = b
        .upload(&HostTensor::from_f32(&[33], x.clone()).unwrap())
        .unwrap();
    let ty = b
        .upload(&HostTensor::from_f32(&[33], y.clone()).unwrap())
        .unwrap();
    b.add(&tx, &ty, &tx).unwrap();
    b.scale(&tx, 2.0, &tx).unwrap();
    let got = tx.to_f32_vec().unwrap();
    for i in 0..33 {
        assert_eq!(
            got[i],
            2.0 * (x[i] + y[i]),
            "seed {seed}: in-place element {i}"
        );
    }
}

/// The same inputs give the same bits twice.
pub fn deterministic<B: Backend>(b: &B) {
    let mut inputs = Inputs::new(seed());
    // K long enough for the GPU to split the product over K (slices added in a fixed order).
    let spec = MatmulSpec::new(70, 90, 1030).transpose(true, false);
    let a = b
        .upload(&HostTensor::from_f32(&[spec.a_len()], inputs.uniform(spec.a_len())).unwrap())
        .unwrap();
    let w = b
        .upload(&HostTensor::from_f32(&[spec.b_len()], inputs.uniform(spec.b_len())).unwrap())
        .unwrap();
    let bias = b
        .upload(&HostTensor::from_f32(&[90], inputs.uniform(90)).unwrap())
        .unwrap();
    let run = || {
        let out = selftest::poisoned(b, &[spec.c_len()], DType::F32).unwrap();
        b.matmul(&a, &w, Some(&bias), &out, &spec).unwrap();
        out.to_f32_vec()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

/// Bad operands are errors with a message, never panics.
pub fn bad_operands_are_errors<B: Backend>(b: &B) {
    let f = |shape: &[usize]| b.alloc(shape, DType::F32).unwrap();
    let h = b.alloc(&[4], DType::F16).unwrap();
    let spec = MatmulSpec::new(4, 4, 4);
    let err = b
        .matmul(&f(&[15]), &f(&[16]), None, &f(&[16]), &spec)
        .unwrap_err()
        .to_string();
    assert!(err.contains("A has 15 elements"), "{err}");
    let err = b
        .matmul(&f(&[16]), &f(&[16]), Some(&f(&[3])), &f(&[16]), &spec)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bias has 3"), "{err}");
    // A packed B has the panels' shape, of the backend's own width; a backend that packs no
    // weights refuses one.
    let packed = MatmulSpec::new(4, 4, 4).packed();
    let err = b
        .matmul(&f(&[16]), &f(&[16]), None, &f(&[16]), &packed)
        .unwrap_err()
        .to_string();
    assert!(err.contains("packed B of shape [16]"), "{err}");
    let one_wide = f(&[4, 4, 1]);
    let err = b
        .matmul(&f(&[16]), &one_wide, None, &f(&[16]), &packed)
        .unwrap_err()
        .to_string();
    let zeros = HostTensor::from_f32(&[4, 4], vec![0.0; 16]).unwrap();
    match b.pack_weight(&b.upload(&zeros).unwrap()).unwrap() {
        Some(w) => {
            assert!(err.contains("panels of 1 columns"), "{err}");
            b.matmul(&f(&[16]), &w, None, &f(&[16]), &packed).unwrap();
        }
        None => assert!(err.contains("packs no weights"), "{err}"),
    }
    let err = b.pack_weight(&f(&[16])).unwrap_err().to_string();
    assert!(err.contains("[out, in]"), "{err}");
    let err = b.add(&f(&[4]), &f(&[5]), &f(&[4])).unwrap_err().to_string();
    assert!(err.contains("5"), "{err}");
    let err = b.add(&h, &f(&[4]), &f(&[4])).unwrap_err().to_string();
    assert!(err.contains("f16"), "{err}");
    let arena = f(&[32]);
    let err = b
        .matmul(
            &arena.view(0, &[16]).unwrap(),
            &f(&[16]),
            None,
            &arena.view(8, &[16]).unwrap(),
            &spec,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("overlaps"), "{err}");
    assert!(b.copy(&h, &f(&[4])).is_err());
    // Shifted overlaps are refused (their result would depend on the write order); the same
    // view in place is fine.
    let x = f(&[9]);
    let err = b
        .add(
            &x.view(0, &[8]).unwrap(),
            &f(&[8]),
            &x.view(1, &[8]).unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("partly overlaps"), "{err}");
    assert!(b
        .copy(&x.view(1, &[8]).unwrap(), &x.view(0, &[8]).unwrap())
        .is_err());
    assert!(b.scale(&x, 2.0, &x).is_ok());
    // Sizes beyond any memory are errors, not overflows.
    assert!(b.alloc(&[usize::MAX / 2, 4], DType::F32).is_err());
    let huge = MatmulSpec::new(usize::MAX / 2, 2, 2);
    assert!(b.matmul(&f(&[4]), &f(&[4]), None, &f(&[4]), &huge).is_err());
    assert!(b
        .write(
            &f(&[3]),
            &HostTensor::from_f32(&[2], vec![1.0, 2.0]).unwrap()
        )
        .is_err());
}
