//! `signflow predict --stream`: the signs of one long recording, found by a
//! [`StreamingRecognizer`] fed frame by frame, printed as a timeline (or DESIGN.md's JSON:
//! `{frames, window, stride, segments: [{start_frame, end_frame, class, prob}]}`).
//!
//! A recording shorter than a window is classified as one window of the frames there are
//! (the recogniser's rule at the end of a stream), and said so on standard error.

use clap::Args;
use signflow::infer::stream::Recording;
use signflow::infer::{Segment, StreamSettings, StreamingRecognizer};
use signflow::{with_backend, Error, Result};

use super::predict::{model_and_device, pipeline, PredictArgs};

#[derive(Args)]
pub struct StreamArgs {
    /// Find the signs of one long recording (--input: a .npy of [frames, 258 or 1662] or a
    /// folder of <frame>.npy files) over a sliding window, and print their timeline.
    #[arg(long)]
    pub stream: bool,
    /// With --stream: frames per classified window.
    #[arg(long, requires = "stream", value_parser = super::positive,
          default_value_t = StreamSettings::default().window)]
    pub window: usize,
    /// With --stream: frames from one classified window to the next (at most --window).
    #[arg(long, requires = "stream", value_parser = super::positive,
          default_value_t = StreamSettings::default().stride)]
    pub stride: usize,
    /// With --stream: windows whose class probabilities are averaged before deciding, the
    /// latest and those before it (1 = no smoothing).
    #[arg(long, requires = "stream", value_parser = super::positive,
          default_value_t = StreamSettings::default().smoothing)]
    pub smoothing: usize,
    /// With --stream: class names that mean "no sign" (comma-separated, any case); they make
    /// no segment.
    #[arg(long, requires = "stream", value_delimiter = ',',
          default_values_t = StreamSettings::default().no_sign)]
    pub no_sign: Vec<String>,
}

/// The timeline as `--json` prints it.
#[derive(serde::Serialize)]
struct Timeline<'a> {
    frames: usize,
    window: usize,
    stride: usize,
    segments: &'a [Segment],
}

pub fn predict_stream(args: &PredictArgs) -> Result<()> {
    let s = &args.stream;
    let settings = StreamSettings {
        window: s.window,
        stride: s.stride,
        min_prob: args.min_prob.unwrap_or(StreamSettings::default().min_prob),
        smoothing: s.smoothing,
        no_sign: s.no_sign.clone(),
    };
    settings.validate()?;
    let recording = Recording::load(&args.input)?;
    if recording.len() < settings.window {
        eprintln!(
            "{}: {} frames, fewer than a window of {}: classified as one window of {} frames",
            args.input.display(),
            recording.len(),
            settings.window,
            recording.len()
        );
    }
    let (ckpt, device) = model_and_device(args)?;
    let segments = with_backend!(&device, b => {
        let pipeline = pipeline(b, args, &ckpt)?;
        StreamingRecognizer::new(&pipeline, settings.clone())?.recognize(recording.frames())
    })
    .map_err(|e| match e {
        Error::Data { path, detail } => Error::data(&args.input, format!("{path}: {detail}")),
        other => other,
    })?;
    if args.json {
        super::print_json(&Timeline {
            frames: recording.len(),
            window: settings.window,
            stride: settings.stride,
            segments: &segments,
        });
        return Ok(());
    }
    eprintln!(
        "{} frames, window {} frames, stride {}, smoothing over {} windows, min prob {}",
        recording.len(),
        settings.window,
        settings.stride,
        settings.smoothing,
        settings.min_prob
    );
    if segments.is_empty() {
        println!("no signs");
    }
    for seg in &segments {
        println!(
            "frames {}–{}  {}  {:.2}",
            seg.start_frame,
            seg.end_frame,
            super::printable(&seg.class),
            seg.prob
        );
    }
    Ok(())
}
