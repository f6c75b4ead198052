//! The commands of the `signflow` binary beyond devices, selftest and bench: data, train,
//! eval, predict, export and demo. Each parses its flags (clap) and calls the library.

pub mod data;
pub mod demo;
pub mod export;
pub mod predict;
pub mod subset;
pub mod train;

use std::io::Write;
use std::sync::Arc;

use signflow::data::{Dataset, Loader, LoaderConfig, Source};
use signflow::{AnyBackend, GpuConfig, Result};

/// The help line of every `--device` flag.
pub const DEVICE_HELP: &str =
    "Device: auto, cpu, gpu, gpu:N, vulkan, metal, dx12, gl, BACKEND:N, software, or part of an \
     adapter's name (`signflow devices` lists them)";

/// The help line of every `--json` flag.
pub const JSON_HELP: &str =
    "Print JSON to standard output, alone (logs and progress go to standard error)";

/// JSON on standard output, alone (logs and progress go to standard error).
pub fn print_json<T: serde::Serialize>(value: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

/// Opens the device a `--device` flag names, and says which it is.
pub fn open_device(request: &str) -> Result<AnyBackend> {
    let device = AnyBackend::open(&GpuConfig {
        device: request.to_string(),
        ..GpuConfig::default()
    })?;
    tracing::info!("device: {} ({})", device.info().name, device.info().backend);
    Ok(device)
}

/// Every clip of `data` in order, in batches of `batch_size`, clips preprocessed to `seq_len`
/// frames (feature packs as they are): what eval and predict read.
pub fn inference_loader(data: Arc<Dataset>, seq_len: usize, batch_size: usize) -> Result<Loader> {
    Loader::new(
        Source::all(data)?,
        LoaderConfig {
            batch_size: batch_size.max(1),
            seq_len,
            shuffle: false,
            num_workers: 2,
            ..LoaderConfig::default()
        },
    )
}
