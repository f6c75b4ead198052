//! The host's side of one clip's prediction, recorded op by op against replayed
//! ([`Backend::capture`], which `InferencePipeline::optimize_for_inference` uses), in
//! alternation: the time from the call to the work's submission (workspace, inputs written,
//! forward pass recorded or replayed, submitted), and the whole call with the logits read back.
//!
//! cargo run --release --example replay_host_time -- [DEVICE] [CALLS]
//!     e.g. `cpu 200`, `vulkan 20`; BENCHMARKS.md records the figures.

use std::time::Instant;

use signflow::data::Batch;
use signflow::model::{ModelConfig, SignTransformer, Workspace};
use signflow::selftest::Inputs;
use signflow::{with_backend, AnyBackend, Backend, GpuConfig, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let device = args.next().unwrap_or_else(|| "cpu".into());
    let calls: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100);
    let any = AnyBackend::open(&GpuConfig {
        device,
        ..GpuConfig::default()
    })?;
    with_backend!(&any, b => run(b, calls))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run<B: Backend>(b: &B, calls: usize) -> Result<()> {
    let cfg = ModelConfig::default();
    let mut model = SignTransformer::new(b, cfg.clone(), 0)?;
    model.pack_weights(b)?;
    let seq = cfg.max_seq_len;
    let clip = Batch {
        features: Inputs::new(0).uniform(seq * cfg.num_features),
        mask: vec![1.0; seq],
        labels: vec![0],
        batch: 1,
        seq,
        num_features: cfg.num_features,
    };
    let planned = Workspace::new(b, &cfg, 1, seq, false)?;
    planned.load_inputs(b, &cfg, &clip, &[0])?;
    let replay = b.capture(&mut || model.forward(b, &planned, None))?;
    planned.logits().to_f32_vec()?;
    // Milliseconds to submission and to the logits, for the plain call and the replayed one.
    let (mut plain, mut replayed) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for call in 0..calls + 2 {
        let start = Instant::now();
        let ws = Workspace::new(b, &cfg, 1, seq, false)?;
        ws.load_inputs(b, &cfg, &clip, &[0])?;
        model.forward(b, &ws, None)?;
        b.flush();
        let submitted = start.elapsed();
        ws.logits().to_f32_vec()?;
        // The first two of each are warm-up.
        if call >= 2 {
            plain.0.push(submitted.as_secs_f64() * 1e3);
            plain.1.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let start = Instant::now();
        planned.load_inputs(b, &cfg, &clip, &[0])?;
        match &replay {
            Some(r) => b.replay(r)?,
            None => model.forward(b, &planned, None)?,
        }
        b.flush();
        let submitted = start.elapsed();
        planned.logits().to_f32_vec()?;
        if call >= 2 {
            replayed.0.push(submitted.as_secs_f64() * 1e3);
            replayed.1.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "{} ({}), {calls} calls each, medians in ms",
        b.info().name,
        b.info().backend
    );
    println!("              to submission   whole call");
    for (name, (host, whole)) in [("recorded", plain), ("replayed", replayed)] {
        println!(
            "  {name}   {:>13.3}   {:>10.3}",
            median(host),
            median(whole)
        );
    }
    if replay.is_none() {
        println!("  (nothing to replay on this backend: its ops run as they are called)");
    }
    Ok(())
}
