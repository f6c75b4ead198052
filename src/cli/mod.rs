//! The commands of the `signflow` binary beyond devices, selftest and bench: data, train,
//! eval, predict, export and demo. Each parses its flags (clap) and calls the library.

pub mod data;
pub mod demo;
pub mod export;
pub mod predict;
pub mod predict_stream;
pub mod profile;
pub mod subset;
pub mod train;
pub mod train_args;

use std::io::Write;
use std::sync::{Arc, OnceLock};

use signflow::data::{Dataset, Loader, LoaderConfig, Source};
use signflow::{AnyBackend, CoopMatrix, GpuConfig, Result};

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

/// The value parser of a count flag that must be at least 1.
pub fn positive(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("0 would do nothing: give at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a count ({e})")),
    }
}

/// `text` with its control characters escaped (`\u{1b}`, `\n`, ...), for a terminal: names
/// that come from files (classes, groups, sources) must not move the cursor or recolour it.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// How the class list `given` (of `given_what`) differs from `expected` (of `expected_what`),
/// by name: those only in either, or, for the same names, the first place their order parts.
pub fn class_difference(
    given_what: &str,
    given: &[String],
    expected_what: &str,
    expected: &[String],
) -> String {
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .filter(|c| !b.contains(c))
            .map(|c| format!("`{}`", printable(c)))
            .collect()
    };
    let (extra, missing) = (only(given, expected), only(expected, given));
    let mut parts = Vec::new();
    for (names, what) in [(&extra, given_what), (&missing, expected_what)] {
        if !names.is_empty() {
            parts.push(format!("only in {what}: {}", names.join(", ")));
        }
    }
    if !parts.is_empty() {
        return parts.join("; ");
    }
    match given.iter().zip(expected).position(|(a, b)| a != b) {
        Some(i) => format!(
            "the same names in another order: class {i} is `{}` in {given_what}, `{}` in \
             {expected_what}",
            printable(&given[i]),
            printable(&expected[i])
        ),
        // Equal sets of names in equal order but of other lengths: a name is repeated.
        None => format!(
            "{} names in {given_what}, {} in {expected_what}, a name repeated",
            given.len(),
            expected.len()
        ),
    }
}

/// The commands that take `--device`, and with it `--coop-matrix`.
pub const DEVICE_COMMANDS: [&str; 7] = [
    "selftest", "bench", "demo", "train", "eval", "predict", "profile",
];

/// The `--coop-matrix` flag's argument, which `main` adds to every command of
/// [`DEVICE_COMMANDS`].
pub fn coop_matrix_arg() -> clap::Arg {
    clap::Arg::new("coop_matrix")
        .long("coop-matrix")
        .value_parser(clap::builder::EnumValueParser::<CoopMatrix>::new())
        .default_value("auto")
        .help(
            "Cooperative matrices (tensor cores) for f16 matrix products: auto (where the \
             adapter has them and they pass a check when it is opened) or off",
        )
}

/// The `--coop-matrix` the command line gave, set once by `main`.
static COOP_MATRIX: OnceLock<CoopMatrix> = OnceLock::new();

pub fn set_coop_matrix(value: CoopMatrix) {
    let _ = COOP_MATRIX.set(value);
}

/// The one place a command's device settings meet `--coop-matrix`: `config` with it.
pub fn with_coop_matrix(config: GpuConfig) -> GpuConfig {
    GpuConfig {
        cooperative_matrix: COOP_MATRIX.get().copied().unwrap_or_default(),
        ..config
    }
}

/// Opens the device a `--device` flag names, and says which it is.
pub fn open_device(request: &str) -> Result<AnyBackend> {
    let device = AnyBackend::open(&with_coop_matrix(GpuConfig {
        device: request.to_string(),
        ..GpuConfig::default()
    }))?;
    tracing::info!("device: {} ({})", device.info().name, device.info().backend);
    Ok(device)
}

/// Every clip of `data` in order, in batches of `batch_size`, clips preprocessed to `seq_len`
/// frames (feature packs as they are): what eval and predict read.
pub fn inference_loader(data: Arc<Dataset>, seq_len: usize, batch_size: usize) -> Result<Loader> {
    Loader::new(
        Source::all(data)?,
        LoaderConfig {
            batch_size,
            seq_len,
            shuffle: false,
            num_workers: 2,
            ..LoaderConfig::default()
        },
    )
}
