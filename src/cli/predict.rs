//! `signflow predict`: class probabilities for a feature pack, a clip pack, or one MP_Data
//! sequence folder; with `--stream`, the timeline of signs in a long recording
//! ([`super::predict_stream`]).
//!
//! A clip whose logits hold a NaN or an infinity gets no classes: it is printed as "no
//! prediction" (`"finite": false` and an empty `top` in JSON), and the command exits with
//! status 1 after printing every clip, saying how many were not finite.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use signflow::data::import::read_sequence_folder;
use signflow::data::packs::FRAME_WIDTH;
use signflow::data::Dataset;
use signflow::fsio::guard::check_writes;
use signflow::infer::{load_model, softmax, top_k, InferencePipeline, Prediction, StreamSettings};
use signflow::model::checkpoint::serialize_f32;
use signflow::model::Checkpoint;
use signflow::{with_backend, AnyBackend, Backend, DType, Error, Result};

/// The `--precision` flag of predict and eval.
pub const PRECISION_HELP: &str = "Storage precision of the model's weights and activations: \
    f32, f16 (float16) or bf16 (bfloat16); arithmetic stays f32. Half precision runs on the CPU \
    backend";

#[derive(Args)]
pub struct PredictArgs {
    /// A model checkpoint (safetensors, or an ONNX file signflow exported).
    #[arg(long)]
    pub model: PathBuf,
    /// A feature pack, a clip pack, or one MP_Data sequence folder (<frame>.npy files); with
    /// --stream, a recording: a .npy of [frames, 258 or 1662] or a folder of <frame>.npy files.
    #[arg(long)]
    pub input: PathBuf,
    /// Also write `logits` and `probs` [clips, classes] to this safetensors file.
    #[arg(long, conflicts_with = "stream")]
    pub output: Option<PathBuf>,
    /// Classes to print per clip (at most the model's classes are shown).
    #[arg(long, default_value_t = 5, value_parser = super::positive, conflicts_with = "stream")]
    pub top_k: usize,
    #[arg(long, default_value = "auto", help = super::DEVICE_HELP)]
    pub device: String,
    /// Clips per batch.
    #[arg(long, default_value_t = 64, value_parser = super::positive, conflicts_with = "stream")]
    pub batch_size: usize,
    #[arg(long, value_parser = probability, help = min_prob_help())]
    pub min_prob: Option<f32>,
    /// Frames raw clips are resampled to, at most the model's max_seq_len (default: the
    /// length the model was trained on; ready features keep their own).
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long, default_value = "f32", help = PRECISION_HELP)]
    pub precision: DType,
    #[arg(long, help = super::JSON_HELP)]
    pub json: bool,
    #[command(flatten)]
    pub stream: super::predict_stream::StreamArgs,
}

fn min_prob_help() -> String {
    format!(
        "Call a clip \"unknown\" when its best class is less likely than this, a probability \
         from 0 to 1 [default: 0]; with --stream, the least smoothed probability of a sign \
         that makes a segment [default: {}]",
        StreamSettings::default().min_prob
    )
}

fn probability(text: &str) -> std::result::Result<f32, String> {
    match text.parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("`{text}` is not a probability from 0 to 1")),
    }
}

pub fn predict(args: PredictArgs) -> Result<()> {
    if args.stream.stream {
        return super::predict_stream::predict_stream(&args);
    }
    if let Some(output) = &args.output {
        check_writes(
            &[("--model", &args.model), ("--input", &args.input)],
            &[("--output", output)],
        )?;
    }
    let (ckpt, device) = model_and_device(&args)?;
    let (logits, classes) = with_backend!(&device, b => all_logits(b, &args, &ckpt))?;
    let c = classes.len();
    let probs: Vec<f32> = logits.chunks(c).flat_map(softmax).collect();
    let n = logits.len() / c;
    if let Some(path) = &args.output {
        let shape = [n, c];
        let bytes = serialize_f32(
            [
                ("logits", &shape[..], &logits[..]),
                ("probs", &shape[..], &probs[..]),
            ]
            .into_iter(),
            [(
                "classes".to_string(),
                serde_json::to_string(&classes).expect("names serialise"),
            )]
            .into_iter()
            .collect(),
        )
        .map_err(|e| Error::data(path, e))?;
        signflow::fsio::write_atomic(path, &bytes)?;
        eprintln!("wrote logits and probs of {n} clips to {}", path.display());
    }
    let k = args.top_k.clamp(1, c);
    let predictions: Vec<Prediction> = logits
        .chunks(c)
        .map(|row| top_k(row, &classes, k).with_min_prob(args.min_prob.unwrap_or(0.0)))
        .collect();
    if args.json {
        super::print_json(&predictions);
    } else {
        for (i, p) in predictions.iter().enumerate() {
            if !p.finite {
                println!("clip {i}: no prediction: the model's outputs are not finite");
                continue;
            }
            let unknown = if p.unknown { "unknown; " } else { "" };
            let top: Vec<String> = p
                .top
                .iter()
                .map(|s| {
                    let class = super::printable(&s.class);
                    format!("{class} {:.1}%", 100.0 * s.probability)
                })
                .collect();
            println!("clip {i}: {unknown}{}", top.join(", "));
        }
    }
    let count = predictions.iter().filter(|p| !p.finite).count();
    if count > 0 {
        return Err(Error::NonFiniteOutput {
            input: args.input.display().to_string(),
            detail: format!(
                "{count} of {} clips gave NaN or infinite logits, and no prediction",
                predictions.len()
            ),
        });
    }
    Ok(())
}

/// The model (saying which defaults it took) and the device of `args`.
pub fn model_and_device(args: &PredictArgs) -> Result<(Checkpoint, AnyBackend)> {
    let ckpt = load_model(&args.model)?;
    for what in &ckpt.defaults_used {
        eprintln!(
            "{}: no {what} in the file; using the default",
            args.model.display()
        );
    }
    Ok((ckpt, super::open_device(&args.device)?))
}

/// The pipeline of `ckpt` on `b`, preprocessing to `--seq-len` when given.
pub fn pipeline<'b, B: Backend>(
    b: &'b B,
    args: &PredictArgs,
    ckpt: &Checkpoint,
) -> Result<InferencePipeline<'b, B>> {
    let pipeline = InferencePipeline::from_checkpoint(b, ckpt)?
        .with_precision(args.precision)?
        .optimize_for_inference()?;
    match args.seq_len {
        Some(seq_len) => pipeline.with_seq_len(seq_len),
        None => Ok(pipeline),
    }
}

/// Logits `[clips, classes]` of the input, and the class names.
fn all_logits<B: Backend>(
    b: &B,
    args: &PredictArgs,
    ckpt: &Checkpoint,
) -> Result<(Vec<f32>, Vec<String>)> {
    let pipeline = pipeline(b, args, ckpt)?;
    let classes = pipeline.classes().to_vec();
    if args.input.is_dir() {
        let frames = read_sequence_folder(&args.input)?;
        let logits = pipeline.frames_logits(&frames, FRAME_WIDTH)?;
        return Ok((logits, classes));
    }
    let data = Arc::new(Dataset::load(&args.input)?);
    pipeline.model().config().check_input(&args.input, &data)?;
    let loader = super::inference_loader(data, pipeline.preprocessing().seq_len, args.batch_size)?;
    let mut logits = Vec::new();
    for item in loader.epoch(0) {
        let (batch, ids) = item?;
        logits.extend(pipeline.logits(&batch, &ids)?);
    }
    Ok((logits, classes))
}
