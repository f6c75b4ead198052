//! `signflow selftest` and `signflow bench` cover every precision: half-precision rows where
//! the backend runs the op in that format, and skipped rows (not failures) where it refuses.

mod cli_support;

use cli_support::signflow;
use serde_json::Value;

const HALVES: [&str; 2] = ["f16", "bf16"];

/// The ops of every family that computes in half precision (the optimizer's stay f32).
const HALF_OPS: [&str; 16] = [
    "matmul",
    "add",
    "scale",
    "cast",
    "gelu_fwd",
    "gelu_bwd",
    "bias_grad",
    "layernorm_fwd",
    "layernorm_bwd",
    "mean_pool_fwd",
    "mean_pool_bwd",
    "softmax_xent_fwd",
    "softmax_xent_bwd",
    "dropout",
    "attention_fwd",
    "attention_bwd",
];

fn json_rows(args: &[&str]) -> Vec<Value> {
    let out = signflow(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON alone");
    rows.as_array().expect("an array of rows").clone()
}

#[test]
fn selftest_on_the_cpu_checks_every_family_in_f16_and_bf16() {
    let rows = json_rows(&["selftest", "--device", "cpu", "--json"]);
    for op in HALF_OPS {
        for dtype in HALVES {
            let ran: Vec<&Value> = rows
                .iter()
                .filter(|r| r["op"] == op && r["dtype"] == dtype && r.get("skipped").is_none())
                .collect();
            assert!(!ran.is_empty(), "no {op} {dtype} row");
            assert!(ran.iter().all(|r| r["pass"] == true), "{ran:?}");
        }
    }
    assert!(rows
        .iter()
        .all(|r| r["pass"] == true && r.get("skipped").is_none()));
    // AdamW, the gradient norm and unscaling compute on f32 master weights and gradients.
    for op in ["adamw", "grad_norm", "unscale_check"] {
        assert!(rows
            .iter()
            .filter(|r| r["op"] == op)
            .all(|r| r["dtype"] == "f32"));
    }
}

/// The software adapter (with SHADER_F16) runs every op family's f16 and bf16 self-test rows,
/// and they pass.
#[test]
fn selftest_on_the_software_adapter_runs_every_half_row() {
    let rows = json_rows(&["selftest", "--device", "gpu:0", "--json"]);
    for dtype in HALVES {
        let half: Vec<&Value> = rows.iter().filter(|r| r["dtype"] == dtype).collect();
        let skipped: Vec<&Value> = half
            .iter()
            .copied()
            .filter(|r| r.get("skipped").is_some())
            .collect();
        // Every family runs its half rows on the software adapter (it has SHADER_F16).
        assert!(skipped.is_empty(), "{skipped:?}");
        for op in [
            "matmul",
            "attention_bwd",
            "layernorm_bwd",
            "softmax_xent_bwd",
        ] {
            assert!(
                half.iter().any(|r| r["op"] == op && r["pass"] == true),
                "no passing {op} row: {half:?}"
            );
        }
    }
    assert!(rows.iter().all(|r| r["pass"] == true));
}

#[test]
fn bench_predicts_in_every_precision_on_the_cpu() {
    let rows = json_rows(&[
        "bench",
        "--device",
        "cpu",
        "--filter",
        "predict f32,predict f16,predict bf16",
        "--samples",
        "3",
        "--json",
    ]);
    for dtype in ["f32", "f16", "bf16"] {
        let row = rows
            .iter()
            .find(|r| r["op"] == "predict" && r["dtype"] == dtype)
            .unwrap_or_else(|| panic!("no predict {dtype} row: {rows:?}"));
        assert_eq!((&row["batch"], &row["seq"]), (&1.into(), &64.into()));
        assert!(row["median_ms"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["peak_mb"].as_f64().unwrap() > 0.0, "{row}");
    }
    assert_eq!(rows.len(), 3, "{rows:?}");
}

/// The model's products and the activations' elementwise ops in each half precision, on the
/// CPU and on the software adapter.
#[test]
fn bench_times_half_products_and_elementwise_ops_where_they_run() {
    let args = |device| {
        [
            "bench",
            "--device",
            device,
            "--filter",
            "matmul 2048x256x469 f,matmul 2048x256x469 bf,add",
            "--memory-rows",
            "3",
            "--samples",
            "1",
            "--json",
        ]
    };
    let rows = json_rows(&args("cpu"));
    for op in ["matmul", "add"] {
        for dtype in ["f32", "f16", "bf16"] {
            let row = rows
                .iter()
                .find(|r| r["op"] == op && r["dtype"] == dtype)
                .unwrap_or_else(|| panic!("no {op} {dtype} row: {rows:?}"));
            assert!(row["median_ms"].as_f64().unwrap() > 0.0, "{row}");
        }
    }
    let add_f16 = rows
        .iter()
        .find(|r| r["op"] == "add" && r["dtype"] == "f16");
    assert_eq!(add_f16.unwrap()["bytes"], 3 * 3 * 1024 * 2);

    let rows = json_rows(&[
        "bench",
        "--device",
        "software",
        "--filter",
        "add",
        "--memory-rows",
        "3",
        "--samples",
        "1",
        "--json",
    ]);
    // The software adapter has SHADER_F16: the GPU's elementwise kernels run every precision.
    for dtype in ["f32", "f16", "bf16"] {
        assert!(
            rows.iter().any(|r| r["op"] == "add" && r["dtype"] == dtype),
            "no add {dtype} row: {rows:?}"
        );
    }
}
