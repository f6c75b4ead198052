//! ONNX export: a checkpoint as a standard ONNX graph that any ONNX runtime can run, and the
//! reader that loads such a file back as a checkpoint.
//!
//! The file holds the graph of [`graph::build`] (inputs `features` `[batch, seq_len,
//! num_features]` f32 and `mask` `[batch, seq_len]` bool, output `logits` `[batch, classes]`),
//! the parameters as initializers named exactly as the checkpoint's tensors, and in
//! `metadata_props` everything else a checkpoint holds (configuration, classes, preprocessing)
//! under `signflow.` keys, with the version of the crate that wrote it.

pub mod graph;
pub mod onnx_proto;
mod read;

use std::path::Path;

use prost::Message;

use crate::error::{Error, Result};
use crate::model::{Checkpoint, ParamLayout};
use onnx_proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, FLOAT};

pub use read::{from_onnx_bytes, load_onnx};

/// The opsets the graph is written for: LayerNormalization needs 17; every operator it uses
/// means the same up to 21.
pub const OPSETS: std::ops::RangeInclusive<i64> = 17..=21;
pub const DEFAULT_OPSET: i64 = 17;

/// `producer_name` of the files this crate writes.
pub const PRODUCER: &str = "signflow";
/// The prefix of every metadata key this crate writes.
const META_PREFIX: &str = "signflow.";
const CLASSES: &str = "classes";
const SEQ_LEN: &str = "seq_len";
const LAYOUT: &str = "layout";
const VERSION: &str = "version";

/// How the weights are stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// Half-precision weights with casts to f32; needs mixed precision.
    F16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            other => Err(format!("precision `{other}`: use f32 or f16")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// The ONNX operator set version, within [`OPSETS`].
    pub opset: i64,
    pub precision: Precision,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: DEFAULT_OPSET,
            precision: Precision::F32,
        }
    }
}

/// The ONNX IR version that goes with an opset (onnx/docs/Versioning.md), so that runtimes
/// which check both accept the file.
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19 | 20 => 9,
        _ => 10,
    }
}

/// The checkpoint as an ONNX model, encoded.
pub fn to_onnx(ckpt: &Checkpoint, options: &ExportOptions) -> Result<Vec<u8>> {
    if options.precision == Precision::F16 {
        return Err(Error::Export(
            "f16 export needs mixed precision, not yet available; export with --precision f32"
                .into(),
        ));
    }
    if !OPSETS.contains(&options.opset) {
        return Err(Error::Export(format!(
            "opset {} is not supported: SignFlow writes opsets {} to {}",
            options.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    Ok(model_proto(ckpt, options.opset).encode_to_vec())
}

/// Writes the checkpoint as an ONNX file, atomically (a temporary file, then a rename).
pub fn write_onnx(ckpt: &Checkpoint, path: &Path, options: &ExportOptions) -> Result<()> {
    crate::fsio::write_atomic(path, &to_onnx(ckpt, options)?)
}

fn model_proto(ckpt: &Checkpoint, opset: i64) -> ModelProto {
    let mut graph = graph::build(&ckpt.config, ckpt.preprocessing.seq_len);
    graph.initializer = ParamLayout::new(&ckpt.config)
        .entries
        .iter()
        .map(|e| {
            let (shape, values) = &ckpt.tensors[&e.name];
            TensorProto {
                dims: shape.iter().map(|&n| n as i64).collect(),
                data_type: FLOAT,
                name: e.name.clone(),
                raw_data: bytemuck::cast_slice(values).to_vec(),
                ..Default::default()
            }
        })
        .collect();
    ModelProto {
        ir_version: ir_version(opset),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: PRODUCER.into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "SignTransformer: sign-language recognition over MediaPipe landmark features"
            .into(),
        metadata_props: metadata(ckpt)
            .into_iter()
            .map(|(key, value)| StringStringEntryProto {
                key: format!("{META_PREFIX}{key}"),
                value,
            })
            .collect(),
        graph: Some(graph),
    }
}

/// Everything a checkpoint holds besides its tensors, keyed without the prefix.
fn metadata(ckpt: &Checkpoint) -> Vec<(String, String)> {
    let mut meta = ckpt.config.to_metadata();
    meta.extend([
        (
            CLASSES.to_string(),
            serde_json::to_string(&ckpt.classes).expect("strings serialise"),
        ),
        (SEQ_LEN.to_string(), ckpt.preprocessing.seq_len.to_string()),
        (LAYOUT.to_string(), ckpt.preprocessing.layout.clone()),
        (VERSION.to_string(), env!("CARGO_PKG_VERSION").to_string()),
    ]);
    meta
}
