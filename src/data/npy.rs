//! The `.npy` files of MP_Data frames: one float64 or float32 array, as `numpy.save` writes
//! it (format versions 1 to 3). Only what a frame can be is read; the header's shape × dtype
//! is checked against the bytes that follow it before any value is decoded.

/// The values of a `.npy` file held in `bytes`, as f32 (f64 values beyond f32's range become
/// infinite, for the caller to reject); the error says what is wrong, for a message naming
/// the file.
pub fn read_floats(bytes: &[u8]) -> Result<Vec<f32>, String> {
    read_array(bytes).map(|(_, values)| values)
}

/// [`read_floats`] with the array's shape, for files that hold more than one frame.
pub fn read_array(bytes: &[u8]) -> Result<(Vec<u64>, Vec<f32>), String> {
    let (header, data) = split_header(bytes)?;
    let (descr, shape, fortran) = header_fields(header)?;
    if fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(format!(
            "holds a {shape:?} array in Fortran (column-major) order; save it in C order \
             (numpy.ascontiguousarray)"
        ));
    }
    let (little, width) = match descr.as_str() {
        "<f8" | "|f8" => (true, 8),
        ">f8" => (false, 8),
        "<f4" | "|f4" => (true, 4),
        ">f4" => (false, 4),
        other => return Err(format!("holds {other} values; expected float64 or float32")),
    };
    let declared = shape
        .iter()
        .try_fold(width, |acc: u64, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("declares shape {shape:?}, more values than any file holds"))?;
    if declared != data.len() as u64 {
        return Err(format!(
            "declares shape {shape:?} of {descr} ({declared} bytes) but holds {} bytes of \
             values; is it truncated?",
            data.len()
        ));
    }
    let values = match (width, little) {
        (8, true) => decode(data, |b| f64::from_le_bytes(b) as f32),
        (8, false) => decode(data, |b| f64::from_be_bytes(b) as f32),
        (_, true) => decode(data, f32::from_le_bytes),
        (_, false) => decode(data, f32::from_be_bytes),
    };
    Ok((shape, values))
}

fn decode<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    data.chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks of N bytes")))
        .collect()
}

/// The header text and the bytes after it.
fn split_header(bytes: &[u8]) -> Result<(&str, &[u8]), String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    let not_npy = || "is not a .npy file (no NUMPY magic at its start)".to_string();
    let rest = bytes.strip_prefix(MAGIC).ok_or_else(not_npy)?;
    let (len, rest) = match rest {
        [1, 0, a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
        [2 | 3, 0, a, b, c, d, rest @ ..] => (u32::from_le_bytes([*a, *b, *c, *d]) as usize, rest),
        [major, minor, ..] => {
            return Err(format!(
                "is .npy format version {major}.{minor}; versions 1.0 to 3.0 are read"
            ))
        }
        _ => return Err("is truncated inside its .npy header".into()),
    };
    if len > rest.len() {
        return Err(format!(
            "declares a {len}-byte header but has {} bytes after it; is it truncated?",
            rest.len()
        ));
    }
    let (header, data) = rest.split_at(len);
    let header = std::str::from_utf8(header).map_err(|_| "its header is not text".to_string())?;
    Ok((header, data))
}

/// `descr`, `shape` and `fortran_order` of a header such as `{'descr': '<f8',
/// 'fortran_order': False, 'shape': (258,), }` (a Python dict literal).
fn header_fields(text: &str) -> Result<(String, Vec<u64>, bool), String> {
    let bad = |why: &str| format!("has a malformed .npy header ({why}): {text:?}");
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| bad("not a dict"))?;
    let (mut descr, mut shape, mut fortran) = (None, None, false);
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (key, after) = quoted(rest).ok_or_else(|| bad("a key is not a quoted name"))?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or_else(|| bad("no `:` after a key"))?
            .trim_start();
        let after = if let Some(inner) = after.strip_prefix('(') {
            let (items, after) = inner.split_once(')').ok_or_else(|| bad("unclosed shape"))?;
            let dims = items
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(|d| {
                    d.parse::<u64>()
                        .map_err(|_| bad("a dimension is not a count"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if key == "shape" {
                shape = Some(dims);
            }
            after
        } else if let Some((value, after)) = quoted(after) {
            if key == "descr" {
                descr = Some(value.to_string());
            }
            after
        } else {
            let end = after.find(',').unwrap_or(after.len());
            let word = after[..end].trim();
            if !matches!(word, "True" | "False") {
                return Err(bad("a value is not a string, a tuple or a bool"));
            }
            if key == "fortran_order" {
                fortran = word == "True";
            }
            &after[end..]
        };
        let after = after.trim_start();
        rest = after.strip_prefix(',').unwrap_or(after).trim_start();
        if rest.len() == after.len() && !rest.is_empty() {
            return Err(bad("no `,` between entries"));
        }
    }
    match (descr, shape) {
        (Some(d), Some(s)) => Ok((d, s, fortran)),
        _ => Err(bad("`descr` or `shape` is missing")),
    }
}

/// A string in single or double quotes at the start of `text`, and what follows it.
fn quoted(text: &str) -> Option<(&str, &str)> {
    let quote = text.chars().next().filter(|c| matches!(c, '\'' | '"'))?;
    let inner = &text[1..];
    let end = inner.find(quote)?;
    Some((&inner[..end], &inner[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_both_float_widths_and_byte_orders() {
        let h = |d: &str| format!("{{'descr': '{d}', 'fortran_order': False, 'shape': (2,), }}");
        let f8: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(read_floats(&npy(&h("<f8"), &f8)), Ok(vec![1.5, -2.0]));
        let f4: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        assert_eq!(read_floats(&npy(&h(">f4"), &f4)), Ok(vec![1.5, -2.0]));
    }

    #[test]
    fn arrays_keep_their_shape_in_c_order_only() {
        let h = |order: &str| {
            format!("{{'descr': '<f4', 'fortran_order': {order}, 'shape': (2, 1), }}")
        };
        let f4: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            read_array(&npy(&h("False"), &f4)),
            Ok((vec![2, 1], vec![1.0, 2.0]))
        );
        assert_eq!(read_floats(&npy(&h("True"), &f4)), Ok(vec![1.0, 2.0]));
        let square = "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2, 2), }";
        assert!(read_array(&npy(square, &[0; 16]))
            .unwrap_err()
            .contains("Fortran"));
    }

    #[test]
    fn declared_sizes_must_match_the_bytes() {
        let huge = "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }";
        assert!(read_floats(&npy(huge, &[0; 16]))
            .unwrap_err()
            .contains("shape"));
        let two = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }";
        assert!(read_floats(&npy(two, &[0; 15]))
            .unwrap_err()
            .contains("truncated"));
        let mut long_header = npy(two, &[0; 16]);
        long_header[8] = 0xff;
        assert!(read_floats(&long_header).unwrap_err().contains("header"));
    }
}
