//! Paths in JSON (`config.json`, the training state) without loss: a path that is valid
//! Unicode is a string, as before; any other is an object of its raw units, `{"unix_bytes":
//! [...]}` or `{"windows_wide": [...]}`, so that a run started with such a path resumes with it.
//! For `#[serde(with = "crate::fsio::path_json")]` on an `Option<PathBuf>`.

use std::ffi::OsString;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Recorded {
    Text(String),
    Unix { unix_bytes: Vec<u8> },
    Windows { windows_wide: Vec<u16> },
}

fn record(path: &std::path::Path) -> Recorded {
    if let Some(text) = path.to_str() {
        return Recorded::Text(text.to_string());
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Recorded::Unix {
            unix_bytes: path.as_os_str().as_bytes().to_vec(),
        }
    }
    #[cfg(windows)]
    {
        use std::os::windows::ffi::OsStrExt;
        Recorded::Windows {
            windows_wide: path.as_os_str().encode_wide().collect(),
        }
    }
    #[cfg(not(any(unix, windows)))]
    Recorded::Text(path.to_string_lossy().into_owned())
}

fn restore(recorded: Recorded) -> Result<PathBuf, &'static str> {
    match recorded {
        Recorded::Text(text) => Ok(text.into()),
        #[cfg(unix)]
        Recorded::Unix { unix_bytes } => {
            use std::os::unix::ffi::OsStringExt;
            Ok(OsString::from_vec(unix_bytes).into())
        }
        #[cfg(windows)]
        Recorded::Windows { windows_wide } => {
            use std::os::windows::ffi::OsStringExt;
            Ok(OsString::from_wide(&windows_wide).into())
        }
        #[allow(unreachable_patterns)]
        _ => Err("a path recorded on another kind of system; give the path again"),
    }
}

pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    path.as_deref().map(record).serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Option::<Recorded>::deserialize(d)?
        .map(restore)
        .transpose()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Holder {
        #[serde(with = "super", default)]
        path: Option<PathBuf>,
    }

    fn round_trip(path: Option<PathBuf>) -> String {
        let json = serde_json::to_string(&Holder { path: path.clone() }).unwrap();
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap().path, path);
        json
    }

    #[test]
    fn unicode_paths_are_strings_and_others_are_kept_whole() {
        assert_eq!(
            round_trip(Some("runs/a b".into())),
            r#"{"path":"runs/a b"}"#
        );
        assert_eq!(round_trip(None), r#"{"path":null}"#);
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"caf\xe9"));
            assert_eq!(
                round_trip(Some(odd)),
                r#"{"path":{"unix_bytes":[99,97,102,233]}}"#
            );
        }
        assert!(serde_json::from_str::<Holder>(r#"{"path":3}"#).is_err());
    }
}
