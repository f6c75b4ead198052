//! The commands of the `signflow` binary beyond devices, selftest and bench: data, train,
//! eval, predict and demo. Each parses its flags (clap) and calls the library.

pub mod data;
pub mod demo;
pub mod predict;
pub mod train;

use std::io::Write;

/// JSON on standard output, alone (logs and progress go to standard error).
pub fn print_json<T: serde::Serialize>(value: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}
