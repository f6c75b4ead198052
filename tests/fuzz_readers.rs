//! Fuzzing every reader of a user file: real files (a clip pack, a feature pack, a checkpoint,
//! an ONNX model, a training state, an MP_Data `.npy` frame, a config file, a metrics log) are
//! mutated (bit flips, byte overwrites, truncations at random and at header boundaries, header
//! edits such as huge lengths, shapes and offsets, dtype swaps, inserted and appended bytes)
//! and fed to their reader. Each call must return (Ok or an error) without a panic, within
//! [`CALL_TIMEOUT`], and without its peak of live heap bytes going beyond
//! [`MEMORY_FACTOR`] × the file's size + [`MEMORY_MARGIN`] (a counting global allocator
//! tracks the calling thread).
//!
//! `cargo test --test fuzz_readers` runs a short, fixed-seed round. Run longer by hand:
//!
//! ```text
//! SIGNFLOW_FUZZ_ITERS=200000 SIGNFLOW_FUZZ_SEED=7 cargo test --release --test fuzz_readers -- --nocapture
//! ```
//!
//! `SIGNFLOW_FUZZ_ITERS` is the number of mutated files per reader (default [`DEFAULT_ITERS`]),
//! `SIGNFLOW_FUZZ_SEED` the seed (default [`DEFAULT_SEED`]). A failure names the reader, the
//! iteration and the seed, and leaves the input that failed in the test's temporary folder.
//!
//! A new reader is one row of [`READERS`]: a sample builder and the reader.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use signflow::data::import::read_sequence_folder;
use signflow::data::{synth_clips, ClipPack, Dataset, FeaturePack};
use signflow::export::{to_onnx, ExportOptions};
use signflow::infer::load_model;
use signflow::model::{Checkpoint, ModelConfig, ParamLayout, Preprocessing};
use signflow::train::state::{Progress, TrainingState};
use signflow::train::{MetricsLog, TrainingConfig};

const DEFAULT_ITERS: usize = 2000;
const DEFAULT_SEED: u64 = 22;
/// The longest one call may take, even in the debug build on a busy machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A reader may hold the file and what it decodes from it (f16 values become f32).
const MEMORY_FACTOR: usize = 4;
const MEMORY_MARGIN: usize = 1 << 20;

/// A reader under test: a sample of what it reads, made in a folder, and the reader itself.
struct Reader {
    name: &'static str,
    /// The file's name (some readers look at it: frames must be `<n>.npy`).
    file_name: &'static str,
    sample: fn(&Path) -> Vec<u8>,
    read: fn(&Path) -> signflow::Result<()>,
}

const READERS: &[Reader] = &[
    Reader {
        name: "clip pack",
        file_name: "clips.safetensors",
        sample: |dir| saved(dir, |p| synth_clips(2, 2, 12, 1).save(p)),
        read: |p| ClipPack::load(p).and(Dataset::load(p)).map(drop),
    },
    Reader {
        name: "feature pack",
        file_name: "features.safetensors",
        sample: |dir| saved(dir, |p| feature_pack().save(p)),
        read: |p| FeaturePack::load(p).and(Dataset::load(p)).map(drop),
    },
    Reader {
        name: "checkpoint",
        file_name: "model.safetensors",
        sample: |dir| saved(dir, |p| checkpoint().save(p)),
        read: |p| Checkpoint::load(p).map(drop),
    },
    Reader {
        name: "ONNX model",
        file_name: "model.onnx",
        sample: |_| to_onnx(&checkpoint(), &ExportOptions::default()).unwrap(),
        read: |p| load_model(p).map(drop),
    },
    Reader {
        name: "training state",
        file_name: "state.safetensors",
        sample: |dir| saved(dir, |p| training_state().save(p)),
        read: |p| TrainingState::load(p).map(drop),
    },
    Reader {
        name: "MP_Data frame",
        file_name: "0.npy",
        sample: |_| npy_frame(),
        read: |p| read_sequence_folder(p.parent().unwrap()).map(drop),
    },
    Reader {
        name: "config file",
        file_name: "config.json",
        sample: |_| config_json(),
        read: |p| TrainingConfig::from_file(p).map(drop),
    },
    Reader {
        name: "metrics log",
        file_name: "metrics.jsonl",
        sample: |_| metrics_jsonl(),
        read: |p| MetricsLog::read(p).map(drop),
    },
];

#[test]
fn every_reader_survives_mutated_files() {
    let iters = env_or("SIGNFLOW_FUZZ_ITERS", DEFAULT_ITERS as u64) as usize;
    let seed = env_or("SIGNFLOW_FUZZ_SEED", DEFAULT_SEED);
    let start = Instant::now();
    let workers: Vec<_> = READERS
        .iter()
        .enumerate()
        .map(|(i, reader)| {
            let (tx, rx) = mpsc::channel();
            let thread = std::thread::spawn(move || fuzz(reader, iters, seed ^ i as u64, tx));
            (reader, rx, thread)
        })
        .collect();
    let mut summary = Vec::new();
    for (reader, rx, thread) in workers {
        let mut done = 0;
        loop {
            match rx.recv_timeout(CALL_TIMEOUT) {
                Ok(Event::Called) => done += 1,
                Ok(Event::Failed(why)) => panic!("{}, seed {seed}: {why}", reader.name),
                Ok(Event::Finished { ok, err }) => {
                    summary.push(format!(
                        "{}: {done} files, {ok} read, {err} refused",
                        reader.name
                    ));
                    break;
                }
                Err(_) => panic!(
                    "{}, seed {seed}: call {done} did not return within {CALL_TIMEOUT:?}",
                    reader.name
                ),
            }
        }
        thread.join().unwrap();
    }
    eprintln!(
        "fuzzed {iters} files per reader, seed {seed}, in {:.1} s:\n  {}",
        start.elapsed().as_secs_f64(),
        summary.join("\n  ")
    );
}

enum Event {
    Called,
    Failed(String),
    Finished { ok: usize, err: usize },
}

fn fuzz(reader: &Reader, iters: usize, seed: u64, tx: mpsc::Sender<Event>) {
    let dir = tempfile::Builder::new()
        .prefix("fuzz-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let sample = (reader.sample)(dir.path());
    let path = dir.path().join(reader.file_name);
    std::fs::write(&path, &sample).unwrap();
    if let Err(e) = (reader.read)(&path) {
        let _ = tx.send(Event::Failed(format!(
            "the unmutated sample is refused: {e}"
        )));
        return;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut ok, mut err) = (0, 0);
    for iter in 0..iters {
        let bytes = mutate(&sample, &mut rng);
        std::fs::write(&path, &bytes).unwrap();
        let (result, peak) = tracked(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (reader.read)(&path)))
        });
        let limit = MEMORY_FACTOR * bytes.len() + MEMORY_MARGIN;
        let failure = match result {
            Err(_) => Some("panicked".to_string()),
            Ok(_) if peak > limit => Some(format!(
                "held {peak} bytes at its peak for a {}-byte file (limit {limit})",
                bytes.len()
            )),
            Ok(Ok(())) => {
                ok += 1;
                None
            }
            Ok(Err(_)) => {
                err += 1;
                None
            }
        };
        if let Some(why) = failure {
            let kept = keep_input(reader, iter, &bytes);
            let _ = tx.send(Event::Failed(format!(
                "iteration {iter}: {why} (input kept as {})",
                kept.display()
            )));
            return;
        }
        let _ = tx.send(Event::Called);
    }
    let _ = tx.send(Event::Finished { ok, err });
}

fn keep_input(reader: &Reader, iter: usize, bytes: &[u8]) -> PathBuf {
    let name = format!(
        "fuzz-failure-{}-{iter}-{}",
        reader.name.replace(' ', "-"),
        reader.file_name
    );
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{key}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// Values that break readers when they land in a header: zero, one, negative, sizes at and
/// past the crate's limits and integer widths, and longer than any integer.
const HUGE: &[&str] = &[
    "0",
    "1",
    "-1",
    "65536",
    "1048576",
    "4294967295",
    "4294967296",
    "2147483648",
    "1099511627776",
    "9223372036854775807",
    "18446744073709551615",
    "99999999999999999999999",
];

/// Dtype names swapped for others of the same length, so that the header keeps its size.
const DTYPES: &[&[&str]] = &[
    &["F16", "F32", "F64", "I64", "I32", "U16", "BF1"],
    &["U8", "I8"],
    &["<f8", "<f4", "<i8", ">f8", "|u1", "<f2"],
    &["BOOL", "F8_E"],
];

/// One to three mutations of `sample`.
fn mutate(sample: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = sample.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        mutate_once(&mut bytes, rng);
    }
    bytes
}

fn mutate_once(bytes: &mut Vec<u8>, rng: &mut StdRng) {
    let len = bytes.len();
    let pos = |rng: &mut StdRng| rng.random_range(0..len.max(1));
    match rng.random_range(0..9) {
        0 if len > 0 => {
            for _ in 0..rng.random_range(1..=8) {
                let p = pos(rng);
                bytes[p] ^= 1 << rng.random_range(0..8);
            }
        }
        1 if len > 0 => {
            const SPECIAL: &[u8] = b"\x00\xff\x7f\x80 9{}[]\":,-";
            let p = pos(rng);
            for b in bytes[p..].iter_mut().take(rng.random_range(1..=16)) {
                *b = if rng.random_bool(0.5) {
                    SPECIAL[rng.random_range(0..SPECIAL.len())]
                } else {
                    rng.random()
                };
            }
        }
        2 => bytes.truncate(rng.random_range(0..=len)),
        3 => {
            let cuts = header_boundaries(bytes);
            let cut = cuts[rng.random_range(0..cuts.len())];
            let cut = cut
                .saturating_add_signed(rng.random_range(-2i64..=2) as isize)
                .min(len);
            bytes.truncate(cut);
        }
        4 => edit_number(bytes, rng),
        5 => swap_dtype(bytes, rng),
        6 if len >= 8 => {
            // The safetensors header length, or the first eight bytes of anything else.
            let v: u64 = match rng.random_range(0..4) {
                0 => u64::MAX,
                1 => len as u64 + rng.random_range(0..64),
                2 => 1 << rng.random_range(0..64),
                _ => rng.random(),
            };
            bytes[..8].copy_from_slice(&v.to_le_bytes());
        }
        7 => {
            let extra: Vec<u8> = (0..rng.random_range(1..=4096))
                .map(|_| rng.random())
                .collect();
            let at = if rng.random_bool(0.5) {
                len
            } else {
                rng.random_range(0..=len)
            };
            bytes.splice(at..at, extra);
        }
        _ if len > 1 => {
            // A chunk of the file copied over another place in it.
            let (a, b) = (pos(rng), pos(rng));
            let n = rng.random_range(1..=(len - a.max(b)).min(256));
            let chunk = bytes[a..a + n].to_vec();
            bytes[b..b + n].copy_from_slice(&chunk);
        }
        _ => bytes.push(rng.random()),
    }
}

/// Where a header ends: after a safetensors length prefix and its JSON, or after an .npy
/// preamble and its dict; the start and the end of the file.
fn header_boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut cuts = vec![0, bytes.len()];
    if let Some(n) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    {
        cuts.push(8);
        if n < bytes.len() as u64 {
            cuts.push(8 + n as usize);
        }
    }
    if bytes.starts_with(b"\x93NUMPY") && bytes.len() >= 10 {
        cuts.extend([
            6,
            8,
            10,
            10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize,
        ]);
    }
    cuts
}

/// The text part of a file: a safetensors header, an .npy header, or all of a text file.
fn text_range(bytes: &[u8]) -> std::ops::Range<usize> {
    let bounds = header_boundaries(bytes);
    let end = bounds
        .iter()
        .copied()
        .skip(2)
        .max()
        .unwrap_or(bytes.len())
        .min(bytes.len());
    if end <= 10 {
        0..bytes.len()
    } else {
        0..end
    }
}

/// Replaces a number in the text part with one of [`HUGE`] (the header's length changes with
/// it).
fn edit_number(bytes: &mut Vec<u8>, rng: &mut StdRng) {
    let range = text_range(bytes);
    let runs: Vec<(usize, usize)> = digit_runs(&bytes[range]);
    if runs.is_empty() {
        return;
    }
    let (start, end) = runs[rng.random_range(0..runs.len())];
    let new = HUGE[rng.random_range(0..HUGE.len())].as_bytes();
    let delta = new.len() as i64 - (end - start) as i64;
    bytes.splice(start..end, new.iter().copied());
    fix_header_length(bytes, start, delta);
}

fn swap_dtype(bytes: &mut [u8], rng: &mut StdRng) {
    let range = text_range(bytes);
    let group = DTYPES[rng.random_range(0..DTYPES.len())];
    let text = &bytes[range];
    let hits: Vec<usize> = (0..text.len())
        .filter(|&i| group.iter().any(|d| text[i..].starts_with(d.as_bytes())))
        .collect();
    if hits.is_empty() {
        return;
    }
    let at = hits[rng.random_range(0..hits.len())];
    let new = group[rng.random_range(0..group.len())].as_bytes();
    bytes[at..at + new.len()].copy_from_slice(new);
}

fn digit_runs(text: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i].is_ascii_digit() {
            let start = i;
            while i < text.len() && text[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((start, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// After `delta` bytes were added to (or taken from) a header at `at`, its length field
/// follows (a safetensors prefix, an .npy 1.0 preamble), so that the edit reaches the
/// header's parser rather than being seen as a tear.
fn fix_header_length(bytes: &mut [u8], at: usize, delta: i64) {
    if bytes.starts_with(b"\x93NUMPY\x01\x00") && bytes.len() >= 10 {
        let n = u16::from_le_bytes([bytes[8], bytes[9]]) as i64 + delta;
        if let (true, Ok(n)) = (at >= 10, u16::try_from(n)) {
            bytes[8..10].copy_from_slice(&n.to_le_bytes());
        }
        return;
    }
    let Some(prefix) = bytes.get(..8) else {
        return;
    };
    let n = u64::from_le_bytes(prefix.try_into().unwrap());
    if n >= bytes.len() as u64 || at < 8 || at >= 8 + n as usize {
        return;
    }
    let fixed = n as i64 + delta;
    if fixed >= 0 && 8 + fixed as usize <= bytes.len() {
        bytes[..8].copy_from_slice(&(fixed as u64).to_le_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Samples

fn saved(dir: &Path, save: impl FnOnce(&Path) -> signflow::Result<()>) -> Vec<u8> {
    let path = dir.join("sample");
    save(&path).unwrap();
    std::fs::read(&path).unwrap()
}

fn feature_pack() -> FeaturePack {
    let (n, t, f) = (3, 6, 7);
    FeaturePack {
        features: (0..n * t * f).map(|i| (i as f32 * 0.37).sin()).collect(),
        mask: (0..n * t).map(|i| i % t < 3 + i / t % 2).collect(),
        labels: vec![1, 0, 1],
        n,
        t,
        num_features: f,
        classes: vec!["yes".into(), "no".into()],
    }
}

fn tiny_config() -> ModelConfig {
    ModelConfig {
        num_features: 9,
        num_classes: 3,
        d_model: 8,
        num_heads: 2,
        num_layers: 2,
        ff_dim: 16,
        max_seq_len: 6,
        ..ModelConfig::default()
    }
}

fn checkpoint() -> Checkpoint {
    let preprocessing = Preprocessing {
        seq_len: 6,
        layout: "features".into(),
    };
    let classes = vec!["a".into(), "b".into(), "c".into()];
    Checkpoint::initial(tiny_config(), classes, preprocessing, 3).unwrap()
}

fn training_state() -> TrainingState {
    let n = ParamLayout::new(&tiny_config()).total;
    let values = |k: f32| (0..n).map(|i| (i as f32 * k).cos()).collect();
    TrainingState {
        weights: values(0.1),
        exp_avg: values(0.2),
        exp_avg_sq: values(0.3),
        progress: Progress {
            step: 12,
            epoch: 2,
            batches_done: 3,
            epoch_loss_sum: 4.5,
            epoch_loss_count: 3,
            best_top1: Some(0.5),
            best_epoch: 1,
            bad_epochs: 0,
            finished: false,
        },
        config: TrainingConfig::default(),
        scaler: None,
    }
}

fn npy_frame() -> Vec<u8> {
    let mut header = "{'descr': '<f8', 'fortran_order': False, 'shape': (258,), }".to_string();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend((0..258).flat_map(|j| (0.1 + 0.001 * j as f64).to_le_bytes()));
    out
}

fn config_json() -> Vec<u8> {
    let mut value = serde_json::to_value(TrainingConfig::default()).unwrap();
    value["model"] = serde_json::to_value(tiny_config()).unwrap();
    serde_json::to_vec_pretty(&value).unwrap()
}

fn metrics_jsonl() -> Vec<u8> {
    let mut text = String::new();
    for step in 1..=6 {
        text += &format!(
            "{{\"kind\":\"step\",\"step\":{step},\"epoch\":{},\"loss\":{},\"lr\":0.001}}\n",
            (step + 2) / 3,
            2.0 / step as f64
        );
    }
    text +=
        "{\"kind\":\"epoch\",\"epoch\":1,\"train_loss\":1.2,\"val_loss\":null,\"val_top1\":null,\
             \"val_top5\":null,\"samples_per_s\":100.0,\"peak_mb\":1.5,\"seconds\":0.2}\n";
    text.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The counting allocator

/// Live and peak heap bytes of the current thread while it is tracked.
#[derive(Clone, Copy)]
struct Usage {
    tracking: bool,
    live: isize,
    peak: isize,
}

thread_local! {
    static USAGE: Cell<Usage> = const {
        Cell::new(Usage { tracking: false, live: 0, peak: 0 })
    };
}

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; the thread-local counter
// is a Cell of plain integers, which neither allocates nor has a destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn count(delta: isize) {
    let _ = USAGE.try_with(|u| {
        let mut now = u.get();
        if now.tracking {
            now.live += delta;
            now.peak = now.peak.max(now.live);
            u.set(now);
        }
    });
}

/// `f`'s result and the peak of heap bytes it held at once, on this thread.
fn tracked<T>(f: impl FnOnce() -> T) -> (T, usize) {
    USAGE.with(|u| {
        u.set(Usage {
            tracking: true,
            live: 0,
            peak: 0,
        })
    });
    let result = f();
    let peak = USAGE.with(|u| {
        let now = u.get();
        u.set(Usage {
            tracking: false,
            ..now
        });
        now.peak
    });
    (result, peak.max(0) as usize)
}
