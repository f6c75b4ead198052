//! Live recognition: the segmenter on made-up probabilities, the recogniser's windows and
//! refusals, and a model trained here on real signing naming the signs of recordings stitched
//! from clips it never trained on, through the library and through `predict --stream`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use signflow::data::packs::{ClipPack, FRAME_WIDTH, LAYOUT_258};
use signflow::data::{Dataset, Source};
use signflow::infer::stream::{without_hands, Recording, Segmenter};
use signflow::infer::{InferencePipeline, Segment, StreamSettings, StreamingRecognizer};
use signflow::model::{Checkpoint, ModelConfig, Preprocessing};
use signflow::train::{initial_model, Trainer, TrainingConfig};
use signflow::{Adapters, CpuBackend, Error, GpuBackend, GpuConfig};

const PACK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/traduttore/clips.safetensors"
);
/// The signs the model learns, besides "idle" (hands out of view).
const SIGNS: [&str; 4] = ["hello", "thank-you", "no", "coffee"];
/// The signer trained on; the clips stitched into recordings are the other one's.
const TRAIN_GROUP: &str = "dmohazab";
const HELD_OUT_GROUP: &str = "TheCamNelson";
/// Frames of a traduttore clip: the window the recordings are read with.
const CLIP_FRAMES: usize = 20;
/// Idle frames around each stitched sign.
const GAP: usize = 24;

fn cpu() -> CpuBackend {
    CpuBackend::new(&GpuConfig::default()).unwrap()
}

/// A model trained on [`TRAIN_GROUP`]'s clips of [`SIGNS`] and on an "idle" class (clips of
/// that signer with the hands out of view), and the pack it came from.
struct Trained {
    checkpoint: Checkpoint,
    pack: ClipPack,
    dir: tempfile::TempDir,
}

impl Trained {
    fn model_path(&self) -> PathBuf {
        self.dir.path().join("model.safetensors")
    }

    /// Held-out clips: the `n`-th clip of each sign in turn by [`HELD_OUT_GROUP`].
    fn held_out(&self, signs: &[&str], n: usize) -> Vec<usize> {
        let group = group_index(&self.pack, HELD_OUT_GROUP);
        signs
            .iter()
            .map(|s| {
                let class = class_index(&self.pack, s);
                (0..self.pack.len())
                    .filter(|&i| self.pack.labels[i] == class && self.pack.groups[i] == group)
                    .nth(n)
                    .unwrap()
            })
            .collect()
    }
}

fn class_index(pack: &ClipPack, name: &str) -> usize {
    pack.classes.iter().position(|c| c == name).unwrap()
}

fn group_index(pack: &ClipPack, name: &str) -> usize {
    pack.group_names.iter().position(|g| g == name).unwrap()
}

/// Trained once for every test of this file.
fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let pack = ClipPack::load(PACK).unwrap();
        let group = group_index(&pack, TRAIN_GROUP);
        let mut training = ClipPack {
            landmarks: Vec::new(),
            t_max: pack.t_max,
            lengths: Vec::new(),
            labels: Vec::new(),
            groups: Vec::new(),
            classes: SIGNS.iter().map(|s| s.to_string()).collect(),
            group_names: vec![TRAIN_GROUP.into()],
            source: pack.source.clone(),
            license: pack.license.clone(),
        };
        training.classes.push("idle".into());
        let mut add = |frames: Vec<f32>, label: usize| {
            let mut padded = frames;
            padded.resize(pack.t_max * FRAME_WIDTH, 0.0);
            training.landmarks.extend(padded);
            training.lengths.push(pack.t_max);
            training.labels.push(label);
            training.groups.push(0);
        };
        let mine: Vec<usize> = (0..pack.len())
            .filter(|&i| pack.groups[i] == group)
            .collect();
        for &i in &mine {
            let name = &pack.classes[pack.labels[i]];
            if let Some(label) = SIGNS.iter().position(|s| s == name) {
                add(pack.clip(i).to_vec(), label);
            }
        }
        for &i in mine.iter().step_by(mine.len() / 100) {
            add(without_hands(pack.clip(i)), SIGNS.len());
        }
        let data = Arc::new(Dataset::Clips(training));
        let model_cfg = ModelConfig {
            d_model: 64,
            num_heads: 4,
            num_layers: 2,
            ff_dim: 128,
            max_seq_len: CLIP_FRAMES,
            dropout: 0.1,
            ..ModelConfig::default()
        };
        let config = TrainingConfig {
            device: "cpu".into(),
            num_epochs: 12,
            batch_size: 16,
            learning_rate: 2e-3,
            weight_decay: 0.01,
            log_every: 1000,
            ..TrainingConfig::default()
        };
        let b = cpu();
        let classes = data.classes().to_vec();
        let started = std::time::Instant::now();
        let (model, _) = initial_model(&b, &model_cfg, &classes, None, config.seed).unwrap();
        let mut trainer = Trainer::new(&b, model, config, classes).unwrap();
        trainer
            .fit(Source::all(data.clone()).unwrap(), None)
            .unwrap();
        eprintln!(
            "trained on {} clips in {:.1} s",
            data.len(),
            started.elapsed().as_secs_f64()
        );
        let checkpoint = trainer
            .checkpoint(&trainer.preprocessing_for(&data))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let trained = Trained {
            checkpoint,
            pack,
            dir,
        };
        trained.checkpoint.save(&trained.model_path()).unwrap();
        trained
    })
}

/// The signs read with a window of one clip's length.
fn clip_settings() -> StreamSettings {
    StreamSettings {
        window: CLIP_FRAMES,
        stride: 4,
        smoothing: 2,
        ..StreamSettings::default()
    }
}

fn recognize(
    pipeline: &InferencePipeline<'_, CpuBackend>,
    recording: &Recording,
    settings: StreamSettings,
) -> Vec<Segment> {
    StreamingRecognizer::new(pipeline, settings)
        .unwrap()
        .recognize(recording.frames())
        .unwrap()
}

fn names(segments: &[Segment]) -> Vec<&str> {
    segments.iter().map(|s| s.class.as_str()).collect()
}

#[test]
fn the_timeline_names_held_out_signs_in_order() {
    let trained = trained();
    let b = cpu();
    let pipeline = InferencePipeline::from_checkpoint(&b, &trained.checkpoint).unwrap();
    let order = ["coffee", "hello", "no", "thank-you", "hello", "coffee"];
    for n in 0..3 {
        let clips = trained.held_out(&order, n);
        let recording = Recording::stitch(&trained.pack, &clips, GAP);
        let segments = recognize(&pipeline, &recording, clip_settings());
        assert_eq!(names(&segments), order, "{segments:?}");
        for (k, seg) in segments.iter().enumerate() {
            // Sign k's frames, after k + 1 gaps and k signs.
            let start = (k + 1) * GAP + k * CLIP_FRAMES;
            let end = start + CLIP_FRAMES - 1;
            assert!(
                seg.start_frame <= start && end <= seg.end_frame,
                "sign {k} is frames {start} to {end}: {seg:?}"
            );
        }
    }
}

#[test]
fn no_sign_classes_and_unlikely_windows_make_no_segment() {
    let trained = trained();
    let b = cpu();
    let pipeline = InferencePipeline::from_checkpoint(&b, &trained.checkpoint).unwrap();
    let order = ["hello", "no", "thank-you"];
    let recording = Recording::stitch(&trained.pack, &trained.held_out(&order, 1), GAP);
    // With no class taken for "no sign", the idle gaps between the signs show.
    let everything = recognize(
        &pipeline,
        &recording,
        StreamSettings {
            no_sign: Vec::new(),
            ..clip_settings()
        },
    );
    let idle: Vec<&Segment> = everything.iter().filter(|s| s.class == "idle").collect();
    assert!(idle.len() >= 2, "{everything:?}");
    // Named in another case, idle is no sign again.
    let signs = recognize(
        &pipeline,
        &recording,
        StreamSettings {
            no_sign: vec!["IDLE".into()],
            ..clip_settings()
        },
    );
    assert_eq!(names(&signs), order, "{signs:?}");
    // A higher threshold keeps only the windows that reach it: every segment is at least that
    // likely, and no threshold is reached by windows that are not certain.
    let sure = recognize(
        &pipeline,
        &recording,
        StreamSettings {
            min_prob: 0.8,
            ..clip_settings()
        },
    );
    assert!(sure.iter().all(|s| s.prob >= 0.8), "{sure:?}");
    let probs: Vec<f32> = signs.iter().map(|s| s.prob).collect();
    let best = probs.iter().fold(0.0f32, |m, &p| m.max(p));
    let none = recognize(
        &pipeline,
        &recording,
        StreamSettings {
            min_prob: 1.0,
            ..clip_settings()
        },
    );
    assert!(best < 1.0 && none.is_empty(), "{none:?}");
}

/// A model that has never trained, of classes `a`, `b`, `idle`: windows and refusals only.
fn untrained() -> Checkpoint {
    let config = ModelConfig {
        num_classes: 3,
        d_model: 16,
        num_heads: 2,
        num_layers: 1,
        ff_dim: 32,
        max_seq_len: 8,
        ..ModelConfig::default()
    };
    let preprocessing = Preprocessing {
        seq_len: 8,
        layout: LAYOUT_258.into(),
    };
    let classes = ["a", "b", "idle"].map(String::from).to_vec();
    Checkpoint::initial(config, classes, preprocessing, 3).unwrap()
}

/// Every window counts for its best class (no threshold, no "no sign" class, no smoothing).
fn every_window(window: usize, stride: usize) -> StreamSettings {
    StreamSettings {
        window,
        stride,
        min_prob: 0.0,
        smoothing: 1,
        no_sign: Vec::new(),
    }
}

/// Frames of made-up landmarks, each unlike the one before.
fn frames(n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|t| {
            (0..FRAME_WIDTH)
                .map(|j| ((t * 31 + j * 7) % 97) as f32 / 97.0)
                .collect()
        })
        .collect()
}

#[test]
fn windows_cover_the_stream_and_a_short_one_is_one_window() {
    let b = cpu();
    let pipeline = InferencePipeline::from_checkpoint(&b, &untrained()).unwrap();
    let push_all = |settings: StreamSettings, n: usize| {
        let mut r = StreamingRecognizer::new(&pipeline, settings).unwrap();
        let mut segments = Vec::new();
        for f in frames(n) {
            segments.extend(r.push(&f).unwrap());
        }
        assert_eq!(r.frames(), n);
        segments.extend(r.finish().unwrap());
        segments
    };
    // Fewer frames than a window: one window of what there is.
    let short = push_all(every_window(32, 8), 5);
    assert_eq!(short.len(), 1, "{short:?}");
    assert_eq!((short[0].start_frame, short[0].end_frame), (0, 4));
    // Windows end at frames 9, 13 and 17, and the last frames make one more window at 19;
    // runs of one class tile them: each starts where a window starts.
    let segments = push_all(every_window(10, 4), 20);
    assert_eq!(segments.first().unwrap().start_frame, 0);
    assert_eq!(segments.last().unwrap().end_frame, 19);
    for s in &segments {
        assert!([0, 4, 8, 10].contains(&s.start_frame), "{segments:?}");
        assert!([9, 13, 17, 19].contains(&s.end_frame), "{segments:?}");
    }
    // The same frames give the same segments one by one and all at once, and 1662-wide frames
    // (the face dropped) the same as 258-wide ones.
    let recording = Recording {
        values: frames(20).concat(),
        width: FRAME_WIDTH,
    };
    let with_face = Recording {
        values: frames(20)
            .iter()
            .flat_map(|f| [&f[..132], &[0.5; 1404][..], &f[132..]].concat())
            .collect(),
        width: 1662,
    };
    assert_eq!(
        recognize(&pipeline, &recording, every_window(10, 4)),
        segments
    );
    assert_eq!(
        recognize(&pipeline, &with_face, every_window(10, 4)),
        segments
    );
}

/// The windows run on whichever device the pipeline is on: a GPU finds what the CPU finds.
#[test]
fn a_gpu_pipeline_finds_the_same_segments() {
    let adapters = Adapters::discover();
    let (adapter, info) = adapters
        .adapter(0)
        .expect("no GPU adapter (install mesa-vulkan-drivers)");
    let gpu = GpuBackend::new(adapter, info.clone(), &GpuConfig::default()).unwrap();
    let recording = Recording {
        values: frames(20).concat(),
        width: FRAME_WIDTH,
    };
    let cpu = cpu();
    let on_cpu = recognize(
        &InferencePipeline::from_checkpoint(&cpu, &untrained()).unwrap(),
        &recording,
        every_window(10, 4),
    );
    let on_gpu = StreamingRecognizer::new(
        &InferencePipeline::from_checkpoint(&gpu, &untrained()).unwrap(),
        every_window(10, 4),
    )
    .unwrap()
    .recognize(recording.frames())
    .unwrap();
    assert_eq!(on_gpu.len(), on_cpu.len(), "{on_gpu:?} {on_cpu:?}");
    for (g, c) in on_gpu.iter().zip(&on_cpu) {
        assert_eq!(
            (g.start_frame, g.end_frame, &g.class),
            (c.start_frame, c.end_frame, &c.class)
        );
        assert!((g.prob - c.prob).abs() < 1e-4, "{g:?} {c:?}");
    }
}

#[test]
fn bad_frames_are_refused_and_the_stream_goes_on() {
    let b = cpu();
    let pipeline = InferencePipeline::from_checkpoint(&b, &untrained()).unwrap();
    let mut r = StreamingRecognizer::new(&pipeline, every_window(4, 2)).unwrap();
    let good = frames(1).remove(0);
    r.push(&good).unwrap();
    let err = r.push(&good[..100]).unwrap_err().to_string();
    assert!(
        err.contains("frame 1") && err.contains("100 values"),
        "{err}"
    );
    let mut bad = good.clone();
    bad[140] = f32::NAN;
    let err = r.push(&bad).unwrap_err().to_string();
    assert!(
        err.contains("frame 1") && err.contains("value 140 is NaN"),
        "{err}"
    );
    assert_eq!(r.frames(), 1);
    for _ in 0..3 {
        r.push(&good).unwrap();
    }
    assert_eq!(r.frames(), 4);
    assert_eq!(r.finish().unwrap().len(), 1);
}

#[test]
fn settings_out_of_range_are_named() {
    let d = StreamSettings::default;
    for (settings, field) in [
        (StreamSettings { window: 0, ..d() }, "window"),
        (
            StreamSettings {
                window: 5000,
                ..d()
            },
            "window",
        ),
        (StreamSettings { stride: 0, ..d() }, "stride"),
        (StreamSettings { stride: 33, ..d() }, "stride"),
        (
            StreamSettings {
                min_prob: 1.5,
                ..d()
            },
            "min_prob",
        ),
        (
            StreamSettings {
                min_prob: f32::NAN,
                ..d()
            },
            "min_prob",
        ),
        (
            StreamSettings {
                smoothing: 0,
                ..d()
            },
            "smoothing",
        ),
    ] {
        match settings.validate() {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{settings:?}: {other:?}"),
        }
        assert!(Segmenter::new(vec!["a".into()], &settings).is_err());
    }
    assert!(d().validate().is_ok());
}

fn classes() -> Vec<String> {
    ["-", "hello", "water", "None"].map(String::from).to_vec()
}

/// Feeds windows of 8 frames at a stride of 4, one row of probabilities each.
fn segment(settings: &StreamSettings, rows: &[[f32; 4]]) -> Vec<(usize, usize, String)> {
    let mut s = Segmenter::new(classes(), settings).unwrap();
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        out.extend(s.window(4 * i, 4 * i + 7, row).unwrap());
    }
    out.extend(s.finish());
    out.into_iter()
        .map(|seg| (seg.start_frame, seg.end_frame, seg.class))
        .collect()
}

const HELLO: [f32; 4] = [0.1, 0.8, 0.05, 0.05];
const WATER: [f32; 4] = [0.1, 0.1, 0.7, 0.1];
const NOTHING: [f32; 4] = [0.85, 0.05, 0.05, 0.05];
const NONE: [f32; 4] = [0.05, 0.05, 0.05, 0.85];
const UNSURE: [f32; 4] = [0.2, 0.4, 0.35, 0.05];

#[test]
fn runs_of_a_sign_become_segments() {
    let plain = StreamSettings {
        smoothing: 1,
        ..StreamSettings::default()
    };
    let seg = |a, b, c: &str| (a, b, c.to_string());
    assert_eq!(
        segment(
            &plain,
            &[NOTHING, HELLO, HELLO, NOTHING, WATER, HELLO, NONE, WATER, WATER]
        ),
        [
            seg(4, 15, "hello"),
            seg(16, 23, "water"),
            seg(20, 27, "hello"),
            seg(28, 39, "water"),
        ]
    );
    // A window under the threshold ends a sign and starts none; one run's probability is
    // the mean of its windows'.
    assert_eq!(
        segment(&plain, &[HELLO, UNSURE, HELLO]),
        [seg(0, 7, "hello"), seg(8, 15, "hello")]
    );
    let mut s = Segmenter::new(classes(), &plain).unwrap();
    s.window(0, 7, &HELLO).unwrap();
    s.window(4, 11, &[0.0, 0.6, 0.4, 0.0]).unwrap();
    let last = s.finish().unwrap();
    assert!((last.prob - 0.7).abs() < 1e-6, "{last:?}");
    // The threshold is inclusive.
    let at = StreamSettings {
        min_prob: 0.4,
        ..plain.clone()
    };
    assert_eq!(segment(&at, &[UNSURE]), [seg(0, 7, "hello")]);
    // "No sign" classes never make a segment, however likely; other names can be chosen.
    assert!(segment(&plain, &[NOTHING, NONE, NOTHING]).is_empty());
    let hello_is_nothing = StreamSettings {
        no_sign: vec!["HELLO".into()],
        ..plain.clone()
    };
    assert_eq!(
        segment(&hello_is_nothing, &[HELLO, NOTHING, NONE]),
        [seg(4, 11, "-"), seg(8, 15, "None")]
    );
}

#[test]
fn smoothing_averages_the_latest_windows() {
    let rows = [HELLO, HELLO, WATER, HELLO, HELLO];
    let seg = |a, b, c: &str| (a, b, c.to_string());
    let plain = StreamSettings {
        smoothing: 1,
        ..StreamSettings::default()
    };
    assert_eq!(
        segment(&plain, &rows),
        [
            seg(0, 11, "hello"),
            seg(8, 15, "water"),
            seg(12, 23, "hello")
        ]
    );
    // Over three windows the lone water window is outvoted.
    let smooth = StreamSettings {
        smoothing: 3,
        ..StreamSettings::default()
    };
    assert_eq!(segment(&smooth, &rows), [seg(0, 23, "hello")]);
}

#[test]
fn probabilities_must_fit_the_classes() {
    let mut s = Segmenter::new(classes(), &StreamSettings::default()).unwrap();
    assert!(s.window(0, 7, &[0.5, 0.5]).is_err());
    assert!(s.window(0, 7, &[f32::NAN, 0.5, 0.5, 0.0]).is_err());
    assert!(s.window(0, 7, &HELLO).is_ok());
}

/// A `.npy` file of little-endian f32 or f64 values.
fn write_npy(path: &Path, shape: &[usize], values: &[f32], f64_values: bool) {
    let dims: Vec<String> = shape.iter().map(|d| format!("{d},")).collect();
    let descr = if f64_values { "<f8" } else { "<f4" };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(" ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for &v in values {
        if f64_values {
            bytes.extend((v as f64).to_le_bytes());
        } else {
            bytes.extend(v.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// `predict --stream` of `input` with `flags`: exit status, stdout, stderr.
fn predict_stream(model: &Path, input: &Path, flags: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_signflow"))
        .args(["predict", "--stream", "--device", "cpu", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .args(flags)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

const CLIP_FLAGS: [&str; 6] = ["--window", "20", "--stride", "4", "--smoothing", "2"];

#[test]
fn predict_stream_reads_a_npy_and_a_frame_folder() {
    let trained = trained();
    let order = ["thank-you", "coffee", "no"];
    let recording = Recording::stitch(&trained.pack, &trained.held_out(&order, 2), GAP);
    let b = cpu();
    let pipeline = InferencePipeline::from_checkpoint(&b, &trained.checkpoint).unwrap();
    let expected = recognize(&pipeline, &recording, clip_settings());
    assert_eq!(names(&expected), order);

    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("recording.npy");
    write_npy(
        &npy,
        &[recording.len(), FRAME_WIDTH],
        &recording.values,
        false,
    );
    let folder = dir.path().join("0");
    std::fs::create_dir(&folder).unwrap();
    for (t, frame) in recording.frames().enumerate() {
        write_npy(
            &folder.join(format!("{t}.npy")),
            &[FRAME_WIDTH],
            frame,
            true,
        );
    }
    for input in [&npy, &folder] {
        let flags = [&CLIP_FLAGS[..], &["--json"]].concat();
        let (ok, stdout, stderr) = predict_stream(&trained.model_path(), input, &flags);
        assert!(ok, "{stderr}");
        let timeline: serde_json::Value = serde_json::from_str(&stdout).expect("JSON alone");
        assert_eq!(timeline["frames"], recording.len());
        assert_eq!(
            (timeline["window"].as_u64(), timeline["stride"].as_u64()),
            (Some(20), Some(4))
        );
        let segments = timeline["segments"].as_array().unwrap();
        assert_eq!(segments.len(), expected.len(), "{stdout}");
        for (got, want) in segments.iter().zip(&expected) {
            assert_eq!(got["class"], want.class.as_str());
            assert_eq!(got["start_frame"], want.start_frame);
            assert_eq!(got["end_frame"], want.end_frame);
            assert!((got["prob"].as_f64().unwrap() - want.prob as f64).abs() < 1e-6);
        }
    }
    let (ok, stdout, stderr) = predict_stream(&trained.model_path(), &npy, &CLIP_FLAGS);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), order.len(), "{stdout}");
    for ((line, sign), seg) in lines.iter().zip(order).zip(&expected) {
        let want = format!("frames {}–{}  {sign}  ", seg.start_frame, seg.end_frame);
        assert!(line.starts_with(&want), "{line:?} is not {want:?}...");
    }
}

#[test]
fn predict_stream_refusals_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    untrained().save(&model).unwrap();
    let fine = frames(6).concat();
    let file = |name: &str, shape: &[usize], values: &[f32]| {
        let path = dir.path().join(name);
        write_npy(&path, shape, values, false);
        path
    };
    // Fewer frames than a window: classified as one window, and said so.
    let short = file("short.npy", &[6, FRAME_WIDTH], &fine);
    let (ok, stdout, stderr) = predict_stream(&model, &short, &["--json"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("fewer than a window of 32"), "{stderr}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["frames"],
        6
    );
    let mut nan = fine.clone();
    nan[3 * FRAME_WIDTH + 7] = f32::NAN;
    let cases = [
        (
            file("narrow.npy", &[6, 43], &fine[..6 * 43]),
            "[frames, 258]",
        ),
        (file("flat.npy", &[6 * FRAME_WIDTH], &fine), "shape [1548]"),
        (file("empty.npy", &[0, FRAME_WIDTH], &[]), "no frames"),
        (
            file("nan.npy", &[6, FRAME_WIDTH], &nan),
            "frame 3: value 7 is NaN",
        ),
    ];
    for (path, why) in cases {
        let (ok, _, stderr) = predict_stream(&model, &path, &[]);
        assert!(!ok);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(stderr.contains(name) && stderr.contains(why), "{stderr}");
    }
    let (ok, _, stderr) = predict_stream(&model, &short, &["--window", "8", "--stride", "9"]);
    assert!(!ok && stderr.contains("stride = 9"), "{stderr}");
    let (ok, _, stderr) = predict_stream(&model, &short, &["--top-k", "2"]);
    assert!(!ok && stderr.contains("cannot be used with"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_signflow"))
        .args(["predict", "--window", "8", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&short)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--stream"),
        "{stderr}"
    );
}
