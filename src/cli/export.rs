//! `signflow export`: a model as a standard ONNX file, for ONNX runtimes.

use std::path::PathBuf;

use clap::Args;
use signflow::export::{write_onnx, ExportOptions, Precision, DEFAULT_OPSET};
use signflow::fsio::guard::check_writes;
use signflow::infer::load_model;
use signflow::Result;

#[derive(Args)]
pub struct ExportArgs {
    /// A model checkpoint (safetensors, or an ONNX file signflow exported).
    #[arg(long)]
    pub model: PathBuf,
    /// The ONNX file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// ONNX operator set version (17 to 21).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    pub opset: i64,
    /// Storage of the weights: f32, or f16 (with casts; needs mixed precision).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

pub fn export(args: ExportArgs) -> Result<()> {
    check_writes(&[("--model", &args.model)], &[("--output", &args.output)])?;
    let ckpt = load_model(&args.model)?;
    for what in &ckpt.defaults_used {
        eprintln!(
            "{}: no {what} in the file; using the default",
            args.model.display()
        );
    }
    let options = ExportOptions {
        opset: args.opset,
        precision: args.precision,
    };
    write_onnx(&ckpt, &args.output, &options)?;
    eprintln!(
        "wrote {} (opset {}; inputs features [batch, {}, {}] f32 and mask [batch, {}] bool; \
         output logits [batch, {}])",
        args.output.display(),
        options.opset,
        ckpt.preprocessing.seq_len,
        ckpt.config.num_features,
        ckpt.preprocessing.seq_len,
        ckpt.config.num_classes
    );
    Ok(())
}
