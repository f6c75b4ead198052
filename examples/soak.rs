//! Soak test: many training steps of a small model, then many predictions, while a second
//! thread samples the memory pool's statistics and the process's resident memory. Both should
//! be flat after warm-up; the summary compares the end of each phase with its warm-up.
//!
//! cargo run --release --example soak -- [DEVICE] [STEPS] [PREDICTIONS]
//!     e.g. `cpu 20000 20000`, `vulkan 2000 2000`; BENCHMARKS.md records the figures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signflow::data::{synth_clips, Dataset, Source};
use signflow::infer::InferencePipeline;
use signflow::model::{ModelConfig, Preprocessing};
use signflow::train::{initial_model, Trainer, TrainingConfig};
use signflow::{with_backend, AnyBackend, Backend};

/// Clips of the synthetic training set, and clips per batch: 8 steps per epoch.
const CLASSES: usize = 4;
const CLIPS_PER_CLASS: usize = 16;
const BATCH: usize = 8;
const SEQ_LEN: usize = 16;
/// Time between two samples of memory.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

#[derive(Clone, Copy)]
struct Sample {
    seconds: f64,
    rss_mib: f64,
    allocated_mib: f64,
    reserved_mib: f64,
}

fn main() -> signflow::Result<()> {
    let mut args = std::env::args().skip(1);
    let device = args.next().unwrap_or_else(|| "cpu".into());
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let predictions: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let epochs = steps.div_ceil(CLASSES * CLIPS_PER_CLASS / BATCH).max(1);

    let pack = synth_clips(CLASSES, CLIPS_PER_CLASS, 24, 7);
    let clips: Vec<Vec<f32>> = (0..pack.len()).map(|i| pack.clip(i).to_vec()).collect();
    let data = Arc::new(Dataset::Clips(pack));
    let classes = data.classes().to_vec();
    let config = TrainingConfig {
        device,
        num_epochs: epochs,
        batch_size: BATCH,
        num_workers: 1,
        log_every: usize::MAX,
        ..TrainingConfig::default()
    };
    let model_config = ModelConfig {
        d_model: 32,
        num_heads: 2,
        num_layers: 2,
        ff_dim: 64,
        max_seq_len: SEQ_LEN,
        ..ModelConfig::default()
    };
    let backend = AnyBackend::open(&config.gpu_config())?;
    println!(
        "device: {} ({}); {} epochs of {} steps, then {predictions} predictions",
        backend.info().name,
        backend.info().backend,
        epochs,
        CLASSES * CLIPS_PER_CLASS / BATCH
    );

    with_backend!(&backend, b => {
        let (model, _) = initial_model(b, &model_config, &classes, None, config.seed)?;
        let mut trainer = Trainer::new(b, model, config, classes)?;
        let (trained, train_samples) = sampled(b, || {
            trainer.fit(Source::all(data.clone())?, None)
        });
        trained?;
        summarise("training", &train_samples);

        let checkpoint = trainer.checkpoint(&Preprocessing {
            seq_len: SEQ_LEN,
            layout: signflow::data::packs::LAYOUT_258.into(),
        })?;
        let pipeline = InferencePipeline::from_checkpoint(b, &checkpoint)?;
        let (predicted, predict_samples) = sampled(b, || {
            for i in 0..predictions {
                pipeline.frames_logits(&clips[i % clips.len()], signflow::data::packs::FRAME_WIDTH)?;
            }
            Ok(())
        });
        predicted?;
        summarise("prediction", &predict_samples);
    });
    Ok(())
}

/// Runs `work` while a second thread samples memory every [`SAMPLE_EVERY`].
fn sampled<B: Backend + Sync, T>(
    backend: &B,
    work: impl FnOnce() -> signflow::Result<T>,
) -> (signflow::Result<T>, Vec<Sample>) {
    let done = AtomicBool::new(false);
    let samples = Mutex::new(Vec::new());
    let started = Instant::now();
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let stats = backend.memory_stats();
                samples.lock().unwrap().push(Sample {
                    seconds: started.elapsed().as_secs_f64(),
                    rss_mib: rss_mib(),
                    allocated_mib: mib(stats.allocated_bytes),
                    reserved_mib: mib(stats.reserved_bytes),
                });
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        let result = work();
        done.store(true, Ordering::Relaxed);
        result
    });
    (result, samples.into_inner().unwrap())
}

/// Prints the phase's memory at each tenth of its time, then at the end of warm-up (the
/// first tenth), its largest afterwards, and at its end.
fn summarise(phase: &str, samples: &[Sample]) {
    let Some(last) = samples.last() else {
        println!("{phase}: too short to sample");
        return;
    };
    for tenth in 1..=10 {
        let s = samples
            .iter()
            .find(|s| s.seconds >= last.seconds * tenth as f64 / 10.0)
            .unwrap_or(last);
        println!(
            "  {phase} {:>6.1} s: RSS {:>8.1} MiB, pool allocated {:>6.1} MiB, reserved {:>6.1} MiB",
            s.seconds, s.rss_mib, s.allocated_mib, s.reserved_mib
        );
    }
    let warm = samples
        .iter()
        .find(|s| s.seconds >= last.seconds / 10.0)
        .unwrap_or(last);
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.seconds >= warm.seconds)
        .collect();
    let max = |f: fn(&Sample) -> f64| after.iter().map(|s| f(s)).fold(f64::MIN, f64::max);
    println!(
        "{phase}: {:.1} s, {} samples\n  {:<14} {:>10} {:>10} {:>10}\n  {:<14} {:>10.1} {:>10.1} {:>10.1}\n  {:<14} {:>10.1} {:>10.1} {:>10.1}\n  {:<14} {:>10.1} {:>10.1} {:>10.1}",
        last.seconds,
        samples.len(),
        "MiB",
        "RSS",
        "allocated",
        "reserved",
        format!("at {:.1} s", warm.seconds),
        warm.rss_mib,
        warm.allocated_mib,
        warm.reserved_mib,
        "largest after",
        max(|s| s.rss_mib),
        max(|s| s.allocated_mib),
        max(|s| s.reserved_mib),
        "at the end",
        last.rss_mib,
        last.allocated_mib,
        last.reserved_mib,
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The process's resident memory from `/proc/self/statm` (Linux); NaN elsewhere.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |pages| pages * 4096.0 / (1024.0 * 1024.0))
}
