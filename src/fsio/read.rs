//! Reading files from paths a user gave, without trusting them: every reader opens its file
//! here, so that a FIFO, a device or a folder is refused by name, a file is never read past
//! the length it had when opened (or past a cap), and the buffer is allocated fallibly.
//! Safetensors files get their header checked against the file's length before the body is
//! read.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

use crate::device::DeviceInfo;
use crate::error::{Error, Result};

/// No cap beyond the file's own length and the memory there is.
pub const NO_CAP: u64 = u64::MAX;

/// The largest header [`read_safetensors`] accepts (the safetensors crate's own limit).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Opens `path` for reading if it is a regular file (or a link to one), giving its length.
/// `what` names what the file should be ("clip pack", "checkpoint", ...) for the message.
pub fn open_regular_file(path: &Path, what: &str) -> Result<(File, u64)> {
    // Checked before opening: opening a FIFO blocks until a writer comes.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    check_regular(path, &meta, what)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // And again on the open file, in case the path changed in between.
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    check_regular(path, &meta, what)?;
    Ok((file, meta.len()))
}

/// The whole of the regular file `path`, refused if it is longer than `max_len` bytes (`what`
/// says what the file should be, for the messages).
pub fn read_regular_file(path: &Path, max_len: u64, what: &str) -> Result<Vec<u8>> {
    let (file, len) = open_regular_file(path, what)?;
    if len > max_len {
        return Err(Error::data(
            path,
            format!("is {len} bytes; a {what} is at most {max_len} bytes: is this the right file?"),
        ));
    }
    read_exact_len(path, file, len, what)
}

/// [`read_regular_file`] of a UTF-8 text file.
pub fn read_text_file(path: &Path, max_len: u64, what: &str) -> Result<String> {
    let bytes = read_regular_file(path, max_len, what)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::data(
            path,
            format!(
                "is not UTF-8 text (byte {} is not valid); a {what} is text",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// The whole of the safetensors file `path`, read only after its header has been checked
/// against the file's length: the header's own length, then every tensor's byte range and
/// its shape × dtype, so that a declared size never makes anything be read or allocated.
pub fn read_safetensors(path: &Path, what: &str) -> Result<Vec<u8>> {
    let (mut file, len) = open_regular_file(path, what)?;
    let torn = |detail: String| {
        Error::data(
            path,
            format!(
                "{detail}: the {what} is truncated, torn or not a safetensors file; copy it \
                 again or re-create it"
            ),
        )
    };
    let mut prefix = [0u8; 8];
    if len < 8 {
        return Err(torn(format!(
            "is {len} bytes, shorter than a safetensors header"
        )));
    }
    file.read_exact(&mut prefix)
        .map_err(|e| Error::io(path, e))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_SAFETENSORS_HEADER || header_len > len - 8 {
        return Err(torn(format!(
            "its header claims {header_len} bytes, but the file has {} after the length",
            len - 8
        )));
    }
    let mut header = try_alloc(path, header_len, what)?;
    (&mut file)
        .take(header_len)
        .read_to_end(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let body_len = len - 8 - header_len;
    check_safetensors_header(&header, body_len).map_err(torn)?;
    let mut bytes = try_alloc(path, len, what)?;
    bytes.extend_from_slice(&prefix);
    bytes.append(&mut header);
    read_to_len(path, file, len, &mut bytes, what)?;
    Ok(bytes)
}

/// Checks that the tensors a safetensors header declares fill `body_len` bytes exactly, each
/// one's byte range matching its shape and dtype. Only what is needed to bound the read is
/// checked here; the safetensors crate checks the rest once the file is in memory.
fn check_safetensors_header(header: &[u8], body_len: u64) -> std::result::Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Info {
        dtype: safetensors::Dtype,
        shape: Vec<u64>,
        data_offsets: (u64, u64),
    }
    let header =
        std::str::from_utf8(header).map_err(|e| format!("its header is not UTF-8 text ({e})"))?;
    let entries: std::collections::HashMap<String, serde_json::Value> =
        serde_json::from_str(header).map_err(|e| format!("its header is not valid ({e})"))?;
    let mut ranges = Vec::new();
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let info: Info = serde_json::from_value(value)
            .map_err(|e| format!("tensor `{name}` has a malformed entry ({e})"))?;
        let bits = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize() as u64, |acc, &d| acc.checked_mul(d))
            .filter(|&b| b <= body_len.saturating_mul(8))
            .ok_or_else(|| {
                format!(
                    "tensor `{name}` declares shape {:?} of {:?}, more than the file holds",
                    info.shape, info.dtype
                )
            })?;
        let (start, end) = info.data_offsets;
        if end < start || end - start != bits.div_ceil(8) || end > body_len {
            return Err(format!(
                "tensor `{name}` declares bytes {start}..{end}, which do not fit its shape {:?} \
                 of {:?} within the {body_len} bytes of data",
                info.shape, info.dtype
            ));
        }
        ranges.push((start, end));
    }
    ranges.sort_unstable();
    let mut at = 0;
    for (start, end) in ranges {
        if start != at {
            return Err(format!(
                "its tensors leave a gap or overlap at byte {at} of the data"
            ));
        }
        at = end;
    }
    if at != body_len {
        return Err(format!(
            "its tensors fill {at} bytes, but the file has {body_len} bytes of data"
        ));
    }
    Ok(())
}

/// An empty buffer with room for `len` bytes, or a message instead of an abort. A file larger
/// than the machine's memory is refused outright: with memory overcommitted, reserving room
/// for it could succeed and the read be killed halfway.
fn try_alloc(path: &Path, len: u64, what: &str) -> Result<Vec<u8>> {
    let too_large = |held: String| {
        Error::data(
            path,
            format!("is {len} bytes, more than {held} to read the {what} into"),
        )
    };
    if len > 1 << 30 {
        if let Some(memory) = DeviceInfo::cpu().memory_bytes.filter(|&m| len > m) {
            return Err(too_large(format!(
                "this machine's {memory} bytes of memory"
            )));
        }
    }
    let mut buf = Vec::new();
    usize::try_from(len)
        .ok()
        .and_then(|n| buf.try_reserve_exact(n).ok())
        .ok_or_else(|| too_large("this machine can hold".into()))?;
    Ok(buf)
}

/// Exactly `len` bytes from `file`: fewer means the file shrank while being read.
fn read_exact_len(path: &Path, file: File, len: u64, what: &str) -> Result<Vec<u8>> {
    let mut buf = try_alloc(path, len, what)?;
    read_to_len(path, file, len, &mut buf, what)?;
    Ok(buf)
}

/// Appends the rest of `file` to `buf` until `buf` holds `len` bytes, and no further: a file
/// that grew since it was opened is read only as far as its length then.
fn read_to_len(path: &Path, file: File, len: u64, buf: &mut Vec<u8>, what: &str) -> Result<()> {
    let rest = len - buf.len() as u64;
    file.take(rest)
        .read_to_end(buf)
        .map_err(|e| Error::io(path, e))?;
    if (buf.len() as u64) < len {
        return Err(Error::data(
            path,
            format!(
                "was {len} bytes when opened but only {} could be read: was the {what} being \
                 written?",
                buf.len()
            ),
        ));
    }
    Ok(())
}

fn check_regular(path: &Path, meta: &Metadata, what: &str) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    Err(Error::data(
        path,
        format!(
            "is {}, not a regular file; a {what} must be a file",
            kind_of(meta)
        ),
    ))
}

/// What a file that is not a regular file is, in words.
fn kind_of(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    "not a file"
}
