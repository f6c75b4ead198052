//! What the command-line tests share (each test crate uses a part of it).
#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs the built `signflow` with `args` and waits for it.
pub fn signflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_signflow"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Runs `signflow` with `args` and asserts that it succeeded (its standard error otherwise).
pub fn succeeds(args: &[&str]) -> Output {
    let out = signflow(args);
    assert!(
        out.status.success(),
        "signflow {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The standard output of a run that [`succeeds`].
pub fn ok(args: &[&str]) -> String {
    String::from_utf8(succeeds(args).stdout).unwrap()
}

/// `train`'s size flags for a tiny model (d_model 16, 2 heads, 1 layer, ff_dim 32,
/// max_seq_len 8), so that a run takes a moment.
pub const TINY_MODEL: [&str; 10] = [
    "--d-model",
    "16",
    "--num-heads",
    "2",
    "--num-layers",
    "1",
    "--ff-dim",
    "32",
    "--max-seq-len",
    "8",
];
