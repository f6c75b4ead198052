//! The crate's error type. Every failure a user can cause is a value of [`Error`] whose message
//! says what was wrong and what to do about it.

use crate::dtype::DType;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device request that matched no adapter, or several.
    #[error("device `{request}`: {reason}\n{available}")]
    DeviceNotFound {
        request: String,
        reason: String,
        /// The table of devices that do exist, ready to print.
        available: String,
    },

    /// A device request that is not of any known form.
    #[error("device request `{request}` is not valid: {reason}")]
    InvalidDeviceRequest { request: String, reason: String },

    /// A configuration value outside its allowed range.
    #[error("{field} = {value} is out of range: {allowed}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },

    /// An allocation that would exceed the memory budget (or the device's memory).
    #[error(
        "out of memory: {request} needs {requested_bytes} bytes, but {in_use_bytes} of the budget \
         of {budget_bytes} bytes are in use{hint}"
    )]
    OutOfMemory {
        request: String,
        requested_bytes: u64,
        in_use_bytes: u64,
        budget_bytes: u64,
        /// Free text appended to the message, e.g. a batch size that fits.
        hint: String,
    },

    /// A single allocation the device or host refused, whatever the budget.
    #[error("cannot allocate {request} ({requested_bytes} bytes): {reason}")]
    AllocationRefused {
        request: String,
        requested_bytes: u64,
        reason: String,
    },

    /// Operands whose shapes do not fit the op.
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    /// An op asked for a dtype it does not take.
    #[error("{op} does not take {dtype}: {hint}")]
    UnsupportedDtype {
        op: &'static str,
        dtype: DType,
        hint: &'static str,
    },

    /// An operand whose dtype breaks its op's dtype rule (the `Backend` methods' docs): a
    /// statistic or parameter that must stay f32, or activations in mixed storage dtypes.
    #[error("{op}: {operand} is {dtype}, but {rule}")]
    OperandDtype {
        op: &'static str,
        operand: &'static str,
        dtype: DType,
        rule: String,
    },

    /// The device could not be opened.
    #[error("could not open {adapter}: {reason}")]
    DeviceOpen { adapter: String, reason: String },

    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// Data (a clip pack, a feature pack, an MP_Data folder, a frame) that is malformed or
    /// does not fit what it is used for.
    #[error("{path}: {detail}")]
    Data { path: String, detail: String },

    /// A model checkpoint or training state that does not fit the model: missing, extra or
    /// mis-shaped tensors, or bad metadata.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint { path: String, detail: String },

    /// Flags (or configuration fields) that cannot work together or would have no effect.
    #[error("{flags}: {reason}")]
    InvalidFlags { flags: String, reason: String },

    /// A model whose outputs were NaN or infinite: no score or prediction is made from them.
    #[error(
        "{input}: non-finite model outputs ({detail}); the model's weights or the inputs hold \
         values beyond f32's range"
    )]
    NonFiniteOutput { input: String, detail: String },

    /// An ONNX file that is not readable or not one `signflow export` wrote.
    #[error("{path}: {detail}")]
    Onnx { path: String, detail: String },

    /// A model that cannot be exported as asked.
    #[error("ONNX export: {0}")]
    Export(String),

    /// The run was interrupted (Ctrl-C) after saving its state.
    #[error("interrupted: {0}")]
    Interrupted(String),

    /// An error reported by the GPU driver or wgpu's validation.
    #[error("GPU error in {context}: {message}")]
    Gpu { context: String, message: String },
}

impl Error {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    pub fn data(path: impl AsRef<std::path::Path>, detail: impl Into<String>) -> Self {
        Error::Data {
            path: path.as_ref().display().to_string(),
            detail: detail.into(),
        }
    }

    pub fn checkpoint(path: impl AsRef<std::path::Path>, detail: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.as_ref().display().to_string(),
            detail: detail.into(),
        }
    }

    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
}
