//! What the command-line tests share.

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
