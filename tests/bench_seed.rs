//! The replaced system's benchmarks (`signflow bench --filter seed`): the `predictions_1000`
//! and `train_50x10k` rows carry DESIGN.md's fields with consistent values. A tiny model and a
//! short budget keep them fast; `signflow bench` runs the same code at full size.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use signflow::bench::seed::{run_seed, SeedPlan, BATCH, PROJECTED_CLIPS, PROJECTED_EPOCHS};
use signflow::bench::BenchBudget;
use signflow::model::ModelConfig;
use signflow::selftest::Inputs;
use signflow::{CpuBackend, DType, Error, GpuConfig};

fn plan() -> SeedPlan {
    SeedPlan {
        model: ModelConfig {
            num_classes: 4,
            d_model: 16,
            num_heads: 2,
            num_layers: 1,
            ff_dim: 32,
            max_seq_len: 8,
            ..ModelConfig::default()
        },
        // Two whole batches and a part of one.
        predictions: 2 * BATCH + 6,
        run_clips: 2 * BATCH,
        run_epochs: 2,
    }
}

fn quick() -> BenchBudget {
    BenchBudget {
        samples: 3,
        min_sample: Duration::from_millis(1),
        max_case: Duration::from_millis(200),
        kernel_times: false,
    }
}

fn rows() -> Vec<Value> {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let mut inputs = Inputs::new(1);
    let mut cases = Vec::new();
    let rows = run_seed(&b, &plan(), &quick(), &mut inputs, (true, true), |c| {
        cases.push(c.to_string())
    })
    .unwrap();
    let every: Vec<String> = ["f32", "f16", "bf16"]
        .iter()
        .flat_map(|d| [format!("seed_1000 {d}"), format!("seed_50x10k {d}")])
        .collect();
    assert_eq!(cases, every);
    rows.iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

fn f(row: &Value, field: &str) -> f64 {
    row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing: {row}"))
}

#[test]
fn seed_rows_have_the_design_fields_and_consistent_values() {
    let rows = rows();
    // Both prediction modes and training, in f32, f16 and bf16 (mixed-precision training).
    assert_eq!(rows.len(), 9, "{rows:?}");
    let ops = ["predictions_1000", "predictions_1000", "train_50x10k"];
    for (k, dtype) in ["f16", "bf16"].into_iter().enumerate() {
        for (row, op) in rows[3 + 3 * k..].iter().zip(ops) {
            assert_eq!((&row["op"], &row["dtype"]), (&op.into(), &dtype.into()));
        }
    }
    let clips = plan().predictions as f64;
    for (row, mode, batch) in [(&rows[0], "single", 1), (&rows[1], "batched", BATCH)] {
        assert_eq!(row["op"], "predictions_1000", "{row}");
        assert_eq!(row["mode"], mode);
        assert_eq!(row["dtype"], "f32");
        assert_eq!(row["backend"], "cpu");
        assert!(!row["device"].as_str().unwrap().is_empty());
        assert_eq!(row["batch"], batch);
        assert_eq!(row["seq"], 8);
        assert_eq!(f(row, "clips"), clips);
        let (total, p50, p99) = (f(row, "total_ms"), f(row, "p50_ms"), f(row, "p99_ms"));
        let (min, max) = (f(row, "min_ms"), f(row, "max_ms"));
        assert!(min > 0.0 && min <= p50 && p50 <= p99 && p99 <= max, "{row}");
        assert_eq!(p50, f(row, "median_ms"));
        // The total is the per-prediction times summed, and the little between them.
        assert!(total >= clips * min && total <= clips * max + 50.0, "{row}");
    }
    let train = &rows[2];
    assert_eq!(train["op"], "train_50x10k", "{train}");
    assert_eq!(train["dtype"], "f32");
    assert_eq!(train["batch"], BATCH);
    let step = f(train, "step_ms");
    assert!(step > 0.0 && f(train, "min_ms") <= step && step <= f(train, "max_ms"));
    assert_eq!(step, f(train, "median_ms"));
    let steps = (PROJECTED_CLIPS.div_ceil(BATCH) * PROJECTED_EPOCHS) as f64;
    let projected = f(train, "projected_s");
    assert!(
        (projected - step * steps / 1e3).abs() <= 1e-9 * projected,
        "{train}"
    );
    assert!(f(train, "run_step_ms") > 0.0, "{train}");
}

/// The pipeline predicts in half precision, and trains in mixed precision: rows of that dtype,
/// not f32 rows under another name.
#[test]
fn half_precision_predicts_and_trains() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let mut inputs = Inputs::new(2);
    for dtype in [DType::F16, DType::Bf16] {
        let rows =
            signflow::bench::seed::bench_predictions(&b, &plan(), dtype, &mut inputs).unwrap();
        assert!(rows.iter().all(|r| r.dtype == dtype && r.median_ms > 0.0));
        let row = signflow::bench::seed::bench_training(&b, &plan(), dtype, &quick(), &mut inputs)
            .unwrap();
        assert_eq!(row.dtype, dtype);
        assert!(row.step_ms.unwrap() > 0.0 && row.run_step_ms.unwrap() > 0.0);
    }
}

/// A filter that matches nothing names the seed cases among those it could have chosen.
#[test]
fn bench_filter_refusal_names_the_seed_cases() {
    let out = Command::new(env!("CARGO_BIN_EXE_signflow"))
        .args(["bench", "--device", "cpu", "--filter", "no-such-case"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("seed") && err.contains("seed_1000") && err.contains("seed_50x10k"),
        "{err}"
    );
}

#[test]
fn a_plan_without_clips_to_predict_is_an_error() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let plan = SeedPlan {
        predictions: 0,
        ..plan()
    };
    let err = signflow::bench::seed::bench_predictions(&b, &plan, DType::F32, &mut Inputs::new(3))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "predictions",
                ..
            }
        ),
        "{err}"
    );
}
