//! Model files: a safetensors checkpoint, or an ONNX file that `signflow export` wrote. They
//! are told apart by their first bytes, so a misnamed file still loads as what it is; the
//! `.onnx` extension only decides which reader explains a file that is neither.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::export::load_onnx;
use crate::fsio::read::open_regular_file;
use crate::model::Checkpoint;

/// Reads a model checkpoint (safetensors) or an ONNX file that `signflow export` wrote.
pub fn load_model(path: &Path) -> Result<Checkpoint> {
    let mut head = Vec::with_capacity(9);
    let (file, _) = open_regular_file(path, "model")?;
    file.take(9)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    if is_onnx(path, &head) {
        load_onnx(path)
    } else {
        Checkpoint::load(path)
    }
}

/// A safetensors file starts with its header's length (8 bytes) and the header's `{`; an
/// ONNX file (a protobuf `ModelProto`) starts with the tag of a field, `ir_version` (0x08)
/// when a standard writer made it.
fn is_onnx(path: &Path, head: &[u8]) -> bool {
    let safetensors = head.get(8) == Some(&b'{');
    let onnx_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    !safetensors && (onnx_name || head.first() == Some(&0x08))
}
