//! Live recognition as a webcam application does it: frames fed one at a time to a
//! `StreamingRecognizer`, each sign printed as soon as it ends, and the speed at the end.
//!
//! cargo run --release --example stream -- MODEL [RECORDING] [DEVICE]
//!     MODEL = a checkpoint, or `untrained` for a fresh model of the default size (it knows no
//!             signs: for timing);
//!     RECORDING = a .npy of [frames, 258 | 1662] or a folder of <frame>.npy files; when absent
//!             (or `-`), 2,000 frames stitched from ../shared/data/traduttore's clips of the
//!             model's classes with idle frames (hands out of view) between them;
//!     DEVICE = auto | cpu | vulkan ... (default cpu).

use std::path::Path;
use std::time::Instant;

use signflow::data::packs::{ClipPack, LAYOUT_258};
use signflow::infer::stream::Recording;
use signflow::infer::{InferencePipeline, Segment, StreamSettings, StreamingRecognizer};
use signflow::model::{Checkpoint, ModelConfig, Preprocessing};
use signflow::{with_backend, AnyBackend, GpuConfig};

const PACK: &str = "../shared/data/traduttore/clips.safetensors";
/// Frames of the stitched recording, and idle frames around each sign.
const FRAMES: usize = 2000;
const GAP: usize = 24;

fn main() -> signflow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(model) = args.next() else {
        eprintln!("usage: stream MODEL|untrained [RECORDING|-] [DEVICE]");
        std::process::exit(2);
    };
    let ckpt = if model == "untrained" {
        let config = ModelConfig::default();
        let classes = (0..config.num_classes).map(|c| c.to_string()).collect();
        let preprocessing = Preprocessing {
            seq_len: config.max_seq_len,
            layout: LAYOUT_258.into(),
        };
        Checkpoint::initial(config, classes, preprocessing, 0)?
    } else {
        signflow::infer::load_model(Path::new(&model))?
    };
    let recording = match args.next().filter(|r| r != "-") {
        Some(path) => Recording::load(Path::new(&path))?,
        None => stitched(&ckpt.classes)?,
    };
    let device = AnyBackend::open(&GpuConfig {
        device: args.next().unwrap_or_else(|| "cpu".into()),
        ..GpuConfig::default()
    })?;
    let settings = StreamSettings::default();
    println!(
        "device: {}; {} frames; window {} frames, stride {}, smoothing over {} windows",
        device.info().name,
        recording.len(),
        settings.window,
        settings.stride,
        settings.smoothing
    );
    with_backend!(&device, b => {
        let pipeline = InferencePipeline::from_checkpoint(b, &ckpt)?.optimize_for_inference()?;
        let mut recognizer = StreamingRecognizer::new(&pipeline, settings)?;
        let show = |s: Segment| {
            println!("frames {}–{}  {}  {:.2}", s.start_frame, s.end_frame, s.class, s.prob)
        };
        let started = Instant::now();
        for frame in recording.frames() {
            if let Some(s) = recognizer.push(frame)? {
                show(s);
            }
        }
        recognizer.finish()?.into_iter().for_each(show);
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{} frames in {seconds:.2} s: {:.0} frames/s (real time is 30)",
            recording.len(),
            recording.len() as f64 / seconds
        );
    });
    Ok(())
}

/// [`FRAMES`] frames of the pack's clips of `classes` (any clips when it has none of them),
/// each sign between idle frames.
fn stitched(classes: &[String]) -> signflow::Result<Recording> {
    let pack = ClipPack::load(PACK)?;
    let known: Vec<usize> = (0..pack.len())
        .filter(|&i| classes.contains(&pack.classes[pack.labels[i]]))
        .collect();
    let pool = if known.is_empty() {
        (0..pack.len()).collect()
    } else {
        known
    };
    // Enough signs for FRAMES frames whatever their lengths, spread over the pool so that
    // they vary; the recording is then cut to FRAMES.
    let signs = FRAMES / GAP + 1;
    let clips: Vec<usize> = (0..signs).map(|k| pool[k * pool.len() / signs]).collect();
    let mut recording = Recording::stitch(&pack, &clips, GAP);
    recording.values.truncate(FRAMES * recording.width);
    Ok(recording)
}
