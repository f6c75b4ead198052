//! Data layer: clip and feature packs (round trips and every kind of malformed file),
//! preprocessing against the features.py fixture, MP_Data import, synthetic packs.

use std::path::{Path, PathBuf};

use half::f16;
use indicatif::ProgressBar;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use signflow::data::features::{
    enrich, normalize_body, preprocess, resample, to_raw225, NUM_FEATURES, RAW_DIM,
};
use signflow::data::import::{import_mp_data, ImportOptions};
use signflow::data::packs::{ClipPack, Dataset, FeaturePack, FRAME_WIDTH};
use signflow::data::synth::synth_clips;
use signflow::Error;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// The detail of an `Error::Data`, failing the test for any other error.
fn data_error<T: std::fmt::Debug>(r: signflow::Result<T>) -> String {
    match r {
        Err(Error::Data { path, detail }) => format!("{path}: {detail}"),
        other => panic!("expected Error::Data, got {other:?}"),
    }
}

fn assert_mentions(message: &str, words: &[&str]) {
    for w in words {
        assert!(message.contains(w), "`{w}` missing from: {message}");
    }
}

/// A synthetic pack whose values survive the f16 round trip exactly.
fn f16_exact_pack() -> ClipPack {
    let mut pack = synth_clips(3, 4, 20, 7);
    for v in &mut pack.landmarks {
        *v = f16::from_f32(*v).to_f32();
    }
    pack
}

fn feature_pack() -> FeaturePack {
    let (n, t, f) = (3, 4, 5);
    FeaturePack {
        features: (0..n * t * f).map(|i| (i as f32 * 0.37).sin()).collect(),
        mask: (0..n * t).map(|i| i % t < 2 + i / t % 2).collect(),
        labels: vec![1, 0, 1],
        n,
        t,
        num_features: f,
        classes: vec!["yes".into(), "no".into()],
    }
}

// ---------------------------------------------------------------------------------------------
// Packs: round trips

#[test]
fn clip_pack_round_trip_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clips.safetensors");
    let pack = f16_exact_pack();
    pack.save(&path).unwrap();
    let loaded = ClipPack::load(&path).unwrap();
    assert_eq!(loaded, pack);
    assert_eq!(loaded.clip(5).len(), pack.lengths[5] * FRAME_WIDTH);

    // The file is the documented format: tensors, dtypes, shapes, metadata.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    assert_eq!(meta["format"], "signflow-clips/1");
    assert_eq!(meta["layout"], "mediapipe-holistic-258");
    assert_eq!(
        serde_json::from_str::<Vec<String>>(&meta["classes"]).unwrap(),
        pack.classes
    );
    assert_eq!(
        serde_json::from_str::<Vec<String>>(&meta["groups"]).unwrap(),
        pack.group_names
    );
    assert_eq!(meta["source"], pack.source);
    assert_eq!(meta["license"], pack.license);
    let info = header.info("landmarks").unwrap();
    assert_eq!(
        (info.dtype, info.shape.clone()),
        (Dtype::F16, vec![12, 20, 258])
    );
    for name in ["lengths", "labels", "groups"] {
        let info = header.info(name).unwrap();
        assert_eq!((info.dtype, info.shape.clone()), (Dtype::I64, vec![12]));
    }
}

#[test]
fn clip_pack_load_zeroes_padding_and_save_rejects_inconsistent_packs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.safetensors");
    let mut pack = f16_exact_pack();
    let short = pack.lengths.iter().position(|&l| l < pack.t_max).unwrap();
    pack.landmarks[(short * pack.t_max + pack.t_max - 1) * FRAME_WIDTH] = 0.5;
    pack.save(&path).unwrap();
    let loaded = ClipPack::load(&path).unwrap();
    assert_eq!(
        loaded.landmarks[(short * pack.t_max + pack.t_max - 1) * FRAME_WIDTH],
        0.0
    );

    let mut bad = f16_exact_pack();
    bad.labels[2] = 3;
    assert_mentions(&data_error(bad.save(&path)), &["labels[2] is 3", "classes"]);
    let mut bad = f16_exact_pack();
    bad.landmarks[7] = 1e6;
    assert_mentions(&data_error(bad.save(&path)), &["clip 0", "f16"]);
    let mut bad = f16_exact_pack();
    bad.classes[1] = bad.classes[0].clone();
    assert_mentions(&data_error(bad.save(&path)), &["twice"]);
    let mut bad = f16_exact_pack();
    bad.groups.pop();
    assert_mentions(&data_error(bad.save(&path)), &["disagree"]);
    // The failed saves left the good file alone.
    assert_eq!(ClipPack::load(&path).unwrap(), loaded);
}

#[test]
fn feature_pack_round_trip_and_dataset_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    let (fp, cp) = (dir.path().join("f.st"), dir.path().join("c.st"));
    let features = feature_pack();
    features.save(&fp).unwrap();
    assert_eq!(FeaturePack::load(&fp).unwrap(), features);
    let clips = f16_exact_pack();
    clips.save(&cp).unwrap();

    let d = Dataset::load(&fp).unwrap();
    assert_eq!(d, Dataset::Features(features.clone()));
    assert_eq!(
        (d.len(), d.classes(), d.labels()),
        (3, &features.classes[..], &[1, 0, 1][..])
    );
    let d = Dataset::load(&cp).unwrap();
    assert_eq!(
        (d.len(), d.classes().len(), d.labels()),
        (12, 3, &clips.labels[..])
    );

    // Each typed loader names the other format.
    assert_mentions(
        &data_error(ClipPack::load(&fp)),
        &["signflow-features/1", "signflow-clips/1"],
    );
    assert_mentions(
        &data_error(FeaturePack::load(&cp)),
        &["signflow-clips/1", "signflow-features/1"],
    );
}

#[test]
fn feature_pack_accepts_a_bool_mask() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.st");
    let p = feature_pack();
    let mask: Vec<u8> = p.mask.iter().map(|&m| m as u8).collect();
    let mut tensors = feature_tensors(&p);
    tensors[1] = ("mask", Dtype::BOOL, vec![p.n, p.t], mask);
    write_pack(&path, tensors, &feature_meta());
    assert_eq!(FeaturePack::load(&path).unwrap(), p);
}

// ---------------------------------------------------------------------------------------------
// Packs: malformed files

type Tensors = Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)>;

fn write_pack(path: &Path, tensors: Tensors, meta: &[(&str, &str)]) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16s(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect()
}

/// Two clips of at most 3 frames.
fn clip_tensors() -> Tensors {
    vec![
        (
            "landmarks",
            Dtype::F16,
            vec![2, 3, 258],
            f16s(&vec![0.25; 2 * 3 * 258]),
        ),
        ("lengths", Dtype::I64, vec![2], i64s(&[3, 2])),
        ("labels", Dtype::I64, vec![2], i64s(&[0, 1])),
        ("groups", Dtype::I64, vec![2], i64s(&[0, 0])),
    ]
}

fn clip_meta() -> Vec<(&'static str, &'static str)> {
    vec![
        ("format", "signflow-clips/1"),
        ("layout", "mediapipe-holistic-258"),
        ("classes", r#"["a", "b"]"#),
        ("groups", r#"["g"]"#),
    ]
}

fn feature_tensors(p: &FeaturePack) -> Tensors {
    vec![
        (
            "features",
            Dtype::F32,
            vec![p.n, p.t, p.num_features],
            p.features.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        (
            "mask",
            Dtype::U8,
            vec![p.n, p.t],
            p.mask.iter().map(|&m| m as u8).collect(),
        ),
        ("labels", Dtype::I64, vec![p.n], i64s(&[1, 0, 1])),
    ]
}

fn feature_meta() -> Vec<(&'static str, &'static str)> {
    vec![
        ("format", "signflow-features/1"),
        ("classes", r#"["yes", "no"]"#),
    ]
}

/// Loads a clip pack made from the valid parts after `edit`, expecting an `Error::Data` that
/// mentions `words`, through `ClipPack::load` and `Dataset::load`.
fn clip_case(
    edit: impl FnOnce(&mut Tensors, &mut Vec<(&'static str, &'static str)>),
    words: &[&str],
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let (mut tensors, mut meta) = (clip_tensors(), clip_meta());
    edit(&mut tensors, &mut meta);
    write_pack(&path, tensors, &meta);
    let message = data_error(ClipPack::load(&path));
    assert_mentions(&message, words);
    assert_mentions(&message, &["bad.safetensors"]);
    assert_mentions(&data_error(Dataset::load(&path)), words);
}

fn set_meta(meta: &mut Vec<(&'static str, &'static str)>, key: &str, value: &'static str) {
    meta.iter_mut().find(|(k, _)| *k == key).unwrap().1 = value;
}

#[test]
fn the_valid_parts_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.safetensors");
    write_pack(&path, clip_tensors(), &clip_meta());
    let pack = ClipPack::load(&path).unwrap();
    assert_eq!(
        (pack.len(), pack.t_max, &pack.lengths[..]),
        (2, 3, &[3, 2][..])
    );
    assert_eq!(pack.clip(1), &vec![0.25; 2 * 258][..]);
    assert_eq!((&pack.source[..], &pack.license[..]), ("", ""));
}

#[test]
fn wrong_or_missing_metadata_is_reported() {
    clip_case(
        |_, m| set_meta(m, "format", "signflow-clips/2"),
        &["signflow-clips/2"],
    );
    clip_case(
        |_, m| set_meta(m, "layout", "mediapipe-holistic-1662"),
        &["layout"],
    );
    clip_case(
        |_, m| set_meta(m, "classes", "a, b"),
        &["`classes`", "JSON"],
    );
    clip_case(
        |_, m| set_meta(m, "groups", r#"{"g": 1}"#),
        &["`groups`", "JSON"],
    );
    clip_case(|_, m| set_meta(m, "classes", r#"["a", "a"]"#), &["twice"]);
    clip_case(|_, m| m.retain(|(k, _)| *k != "layout"), &["`layout`"]);
    clip_case(|_, m| m.clear(), &["`format`"]);
}

#[test]
fn wrong_tensors_are_reported() {
    clip_case(
        |t, _| t.retain(|x| x.0 != "lengths"),
        &["no tensor `lengths`"],
    );
    clip_case(
        |t, _| {
            t[0] = (
                "landmarks",
                Dtype::F32,
                vec![2, 3, 258],
                vec![0; 2 * 3 * 258 * 4],
            )
        },
        &["landmarks", "F32", "F16"],
    );
    clip_case(
        |t, _| {
            t[0] = (
                "landmarks",
                Dtype::F16,
                vec![2, 3, 225],
                vec![0; 2 * 3 * 225 * 2],
            )
        },
        &["225", "258"],
    );
    clip_case(
        |t, _| t[0] = ("landmarks", Dtype::F16, vec![6, 258], vec![0; 6 * 258 * 2]),
        &["landmarks", "[N, T_max, 258]"],
    );
    clip_case(
        |t, _| t[2] = ("labels", Dtype::I64, vec![3], i64s(&[0, 1, 1])),
        &["labels", "3 values", "(2)"],
    );
    clip_case(
        |t, _| t[3] = ("groups", Dtype::I32, vec![2], vec![0; 8]),
        &["groups", "I32"],
    );
}

#[test]
fn out_of_range_values_are_reported() {
    clip_case(|t, _| t[1].3 = i64s(&[3, 0]), &["clip 1 has 0 frames"]);
    clip_case(
        |t, _| t[1].3 = i64s(&[4, 2]),
        &["clip 0 has 4 frames", "T_max = 3"],
    );
    clip_case(
        |t, _| t[2].3 = i64s(&[0, 2]),
        &["labels[1] is 2", "`classes` has 2"],
    );
    clip_case(|t, _| t[2].3 = i64s(&[-1, 0]), &["labels[0] is -1"]);
    clip_case(
        |t, _| t[3].3 = i64s(&[0, 1]),
        &["groups[1] is 1", "`groups` has 1"],
    );
    clip_case(
        |t, _| {
            let mut v = vec![0.25; 2 * 3 * 258];
            v[3 * 258 + 258 + 17] = f32::NAN;
            t[0].3 = f16s(&v);
        },
        &["clip 1, frame 1", "value 17 is NaN", "finite"],
    );
    // Non-finite padding is not data: it is ignored.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.safetensors");
    let mut t = clip_tensors();
    let mut v = vec![0.25; 2 * 3 * 258];
    v[(3 + 2) * 258] = f32::INFINITY;
    t[0].3 = f16s(&v);
    write_pack(&path, t, &clip_meta());
    assert!(ClipPack::load(&path)
        .unwrap()
        .landmarks
        .iter()
        .all(|v| v.is_finite()));
}

#[test]
fn truncated_torn_and_foreign_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    f16_exact_pack().save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let torn = dir.path().join("torn.safetensors");
    for cut in [0, 5, 8, 40, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&torn, &bytes[..cut]).unwrap();
        assert_mentions(
            &data_error(ClipPack::load(&torn)),
            &["torn.safetensors", "truncated"],
        );
        assert_mentions(&data_error(Dataset::load(&torn)), &["truncated"]);
    }
    // A byte too many is torn as well.
    let mut longer = bytes.clone();
    longer.push(0);
    std::fs::write(&torn, &longer).unwrap();
    assert_mentions(&data_error(ClipPack::load(&torn)), &["truncated"]);

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, this is not a pack at all, just some text").unwrap();
    assert_mentions(&data_error(Dataset::load(&text)), &["safetensors"]);

    // A header that is not UTF-8.
    let mut header = br#"{"__metadata__":{"format":"signflow-clips/1"}}"#.to_vec();
    header[20] = 0xff;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    std::fs::write(&text, file).unwrap();
    assert_mentions(&data_error(ClipPack::load(&text)), &["UTF-8"]);

    // A safetensors file that is no pack.
    write_pack(&text, vec![("w", Dtype::F32, vec![1], vec![0; 4])], &[]);
    assert_mentions(&data_error(Dataset::load(&text)), &["no `format`"]);
    write_pack(
        &text,
        vec![("w", Dtype::F32, vec![1], vec![0; 4])],
        &[("format", "gguf")],
    );
    assert_mentions(
        &data_error(Dataset::load(&text)),
        &["`gguf`", "signflow-clips/1"],
    );

    let missing = dir.path().join("missing.safetensors");
    assert!(matches!(ClipPack::load(&missing), Err(Error::Io { .. })));
}

#[test]
fn malformed_feature_packs_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.st");
    let p = feature_pack();
    let case = |edit: &dyn Fn(&mut Tensors), words: &[&str]| {
        let mut t = feature_tensors(&p);
        edit(&mut t);
        write_pack(&path, t, &feature_meta());
        assert_mentions(&data_error(FeaturePack::load(&path)), words);
    };
    case(&|t| t[1].3[5] = 2, &["mask", "clip 1, frame 1 is 2"]);
    case(
        &|t| t[1] = ("mask", Dtype::U8, vec![3, 5], vec![1; 15]),
        &["mask", "[3, 4]"],
    );
    case(
        &|t| t[1] = ("mask", Dtype::F32, vec![3, 4], vec![0; 48]),
        &["mask", "U8 or BOOL"],
    );
    case(&|t| t[1].3[4..8].fill(0), &["clip 1 has no real frame"]);
    case(
        &|t| t[0].3[4 * 27..4 * 28].copy_from_slice(&f32::NAN.to_le_bytes()),
        &["clip 1, frame 1: feature 2 is NaN"],
    );
    case(&|t| t[2].3 = i64s(&[0, 2, 1]), &["labels[1] is 2"]);
    case(
        &|t| t.retain(|x| x.0 != "features"),
        &["no tensor `features`"],
    );
}

// ---------------------------------------------------------------------------------------------
// Preprocessing

/// The features.py fixture: `raw258` [4, 20, 258] and `expected469` [4, 64, 469].
#[test]
fn preprocessing_matches_features_py() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/features/preprocess.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(name).unwrap();
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), v)
    };
    let (raw_shape, raw) = f32s("raw258");
    let (exp_shape, expected) = f32s("expected469");
    assert_eq!(
        (raw_shape, exp_shape.clone()),
        (vec![4, 20, 258], vec![4, 64, 469])
    );
    let (n, t, seq) = (4, 20, 64);
    let got: Vec<f32> = (0..n)
        .flat_map(|i| preprocess(&raw[i * t * 258..(i + 1) * t * 258], 258, seq).unwrap())
        .collect();
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0f32, 0);
    for (j, (g, e)) in got.iter().zip(&expected).enumerate() {
        if (g - e).abs() > worst {
            (worst, at) = ((g - e).abs(), j);
        }
    }
    eprintln!(
        "features.py fixture: max abs error {worst:e} (feature {} of frame {} of clip {}), max |expected| {scale}",
        at % NUM_FEATURES,
        at / NUM_FEATURES % seq,
        at / (NUM_FEATURES * seq)
    );
    assert!(
        worst <= 1e-5 * scale,
        "max abs error {worst} at {at} (scale {scale})"
    );
}

/// A frame whose every value differs, so that reordering mistakes show.
fn distinct_frames(n: usize, width: usize) -> Vec<f32> {
    (0..n * width).map(|i| (i as f32 * 0.618).fract()).collect()
}

#[test]
fn to_raw225_reorders_both_layouts_alike() {
    let f258 = distinct_frames(2, 258);
    let raw = to_raw225(&f258, 258).unwrap();
    assert_eq!(raw.len(), 2 * RAW_DIM);
    assert_eq!(&raw[..126], &f258[132..258]); // left then right hand
    assert_eq!(&raw[126..129], &f258[0..3]); // pose point 0 without visibility
    assert_eq!(&raw[129..132], &f258[4..7]);
    assert_eq!(&raw[RAW_DIM + 224], &f258[258 + 131 - 1]);

    // The same frames with a face between pose and hands.
    let mut f1662 = Vec::new();
    for f in f258.chunks(258) {
        f1662.extend_from_slice(&f[..132]);
        f1662.extend(std::iter::repeat_n(9.0, 1404));
        f1662.extend_from_slice(&f[132..]);
    }
    assert_eq!(to_raw225(&f1662, 1662).unwrap(), raw);
    assert_eq!(
        preprocess(&f1662, 1662, 8).unwrap(),
        preprocess(&f258, 258, 8).unwrap()
    );

    assert!(matches!(to_raw225(&f258, 225), Err(Error::Shape { .. })));
    assert!(matches!(
        to_raw225(&f258[1..], 258),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn resample_keeps_ends_repeats_one_frame_and_interpolates_linearly() {
    let seq: Vec<f32> = vec![0.0, 10.0, 1.0, 20.0, 3.0, 40.0]; // 3 frames of 2
    assert_eq!(resample(&seq, 3, 3), seq);
    assert_eq!(
        resample(&seq[..2], 1, 3),
        vec![0.0, 10.0, 0.0, 10.0, 0.0, 10.0]
    );
    let out = resample(&seq, 3, 5); // points 0, 0.25, 0.5, 0.75, 1 over 0, 0.5, 1
    assert_eq!(
        out,
        vec![0.0, 10.0, 0.5, 15.0, 1.0, 20.0, 2.0, 30.0, 3.0, 40.0]
    );
    assert_eq!(resample(&seq, 3, 1), vec![0.0, 10.0]);
}

#[test]
fn enrich_gives_469_features_with_zero_first_velocity() {
    let raw = to_raw225(&distinct_frames(3, 258), 258).unwrap();
    let out = enrich(&raw, 3);
    assert_eq!(out.len(), 3 * NUM_FEATURES);
    assert!(out[RAW_DIM..2 * RAW_DIM].iter().all(|&v| v == 0.0));
    let n = normalize_body(&raw);
    assert_eq!(&out[..RAW_DIM], &n[..RAW_DIM]);
    assert_eq!(out[NUM_FEATURES + RAW_DIM], n[RAW_DIM] - n[0]);
    assert!(out.iter().all(|v| v.is_finite()));
    assert!(n.iter().all(|v| (-5.0..=5.0).contains(v)));
}

#[test]
fn preprocess_rejects_bad_input_naming_the_frame() {
    let mut frames = distinct_frames(4, 258);
    frames[2 * 258 + 7] = f32::NAN;
    let e = data_error(preprocess(&frames, 258, 16));
    assert_mentions(&e, &["frame 2", "value 7 is NaN", "finite"]);
    frames[2 * 258 + 7] = f32::NEG_INFINITY;
    assert_mentions(&data_error(preprocess(&frames, 258, 16)), &["-inf"]);
    assert_mentions(
        &data_error(preprocess(&[], 258, 16)),
        &["at least one frame"],
    );
    assert!(matches!(
        preprocess(&frames, 258, 0),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        preprocess(&frames, 300, 16),
        Err(Error::Shape { .. })
    ));

    // Through a pack, the clip is named as well.
    let mut pack = synth_clips(2, 1, 12, 3);
    pack.landmarks[pack.t_max * FRAME_WIDTH + 5] = f32::NAN;
    assert_mentions(
        &data_error(pack.features(1, 16)),
        &["clip 1 (class `sign-01`)", "frame 0", "value 5 is NaN"],
    );
}

// ---------------------------------------------------------------------------------------------
// MP_Data import

fn mp_sample() -> PathBuf {
    shared().join("data/mp_data_sample/MP_Data")
}

fn read_npy(path: &Path) -> Vec<f64> {
    npyz::NpyFile::new(std::fs::File::open(path).unwrap())
        .unwrap()
        .into_vec()
        .unwrap()
}

#[test]
fn import_reads_the_sample_in_order() {
    let (pack, report) = import_mp_data(
        &mp_sample(),
        &ImportOptions::default(),
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(pack.classes, ["hello", "thank-you", "water"]);
    assert_eq!((pack.len(), report.clips, report.skipped.len()), (9, 9, 0));
    assert_eq!(pack.t_max, 20);
    assert!(pack.lengths.iter().all(|&l| l == 20));
    assert_eq!(pack.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    assert_eq!(
        (&pack.group_names[..], &pack.groups[..]),
        (&["MP_Data".to_string()][..], &[0; 9][..])
    );

    // Clip 4 is thank-you/1; its frame 10 is 10.npy (numeric order, not 1, 10, 11, ...).
    let clip = pack.clip(4);
    for frame in [0, 2, 10, 19] {
        let file = mp_sample().join(format!("thank-you/1/{frame}.npy"));
        let want: Vec<f32> = read_npy(&file).iter().map(|&v| v as f32).collect();
        assert_eq!(
            &clip[frame * 258..(frame + 1) * 258],
            &want[..],
            "frame {frame}"
        );
    }
    assert!(pack.features(4, 64).unwrap().iter().all(|v| v.is_finite()));

    let opts = ImportOptions {
        classes: Some(vec!["water".into(), "hello".into()]),
        group: Some("signer-1".into()),
        skip_broken: false,
    };
    let (pack, _) = import_mp_data(&mp_sample(), &opts, &ProgressBar::hidden()).unwrap();
    assert_eq!(
        (pack.classes.clone(), pack.labels.clone()),
        (
            vec!["water".to_string(), "hello".into()],
            vec![0, 0, 0, 1, 1, 1]
        )
    );
    assert_eq!(pack.group_names, ["signer-1"]);
    let opts = ImportOptions {
        classes: Some(vec!["coffee".into()]),
        ..opts
    };
    assert_mentions(
        &data_error(import_mp_data(&mp_sample(), &opts, &ProgressBar::hidden())),
        &["coffee", "hello, thank-you, water"],
    );
}

/// A version 1.0 .npy file of one vector (`descr` `<f8` or `<f4`).
fn npy_bytes(values: &[f64], descr: &str) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({},), }}",
        values.len()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for &v in values {
        match descr {
            "<f4" => out.extend((v as f32).to_le_bytes()),
            _ => out.extend(v.to_le_bytes()),
        }
    }
    out
}

fn write_sequence(dir: &Path, class: &str, seq: usize, frames: &[Vec<u8>]) -> PathBuf {
    let seq_dir = dir.join(class).join(seq.to_string());
    std::fs::create_dir_all(&seq_dir).unwrap();
    for (f, bytes) in frames.iter().enumerate() {
        std::fs::write(seq_dir.join(format!("{f}.npy")), bytes).unwrap();
    }
    seq_dir
}

fn good_frame(k: usize) -> Vec<f64> {
    (0..258).map(|j| 0.1 + 0.001 * (j + k) as f64).collect()
}

#[test]
fn import_handles_widths_dtypes_gaps_and_broken_clips() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("Signer 2");
    // a/0: frames 0, 1 and 2, float32 and float64, one of them 1662 wide.
    let wide: Vec<f64> = good_frame(1)[..132]
        .iter()
        .copied()
        .chain(std::iter::repeat_n(7.0, 1404))
        .chain(good_frame(1)[132..].iter().copied())
        .collect();
    let a0 = write_sequence(
        &dir,
        "a",
        0,
        &[
            npy_bytes(&good_frame(0), "<f4"),
            npy_bytes(&wide, "<f8"),
            npy_bytes(&good_frame(5), "<f8"),
        ],
    );
    std::fs::write(a0.join(".DS_Store"), "hidden entries are ignored").unwrap();
    // Broken: a NaN value, a truncated file, a wrong width, an empty sequence.
    let mut nan = good_frame(0);
    nan[40] = f64::NAN;
    let nan_dir = write_sequence(
        &dir,
        "a",
        1,
        &[npy_bytes(&good_frame(0), "<f8"), npy_bytes(&nan, "<f8")],
    );
    let full = npy_bytes(&good_frame(0), "<f8");
    let cut_dir = write_sequence(&dir, "b", 0, &[full[..full.len() - 100].to_vec()]);
    let wide_dir = write_sequence(&dir, "b", 1, &[npy_bytes(&good_frame(0)[..225], "<f8")]);
    let empty_dir = dir.join("b/2");
    std::fs::create_dir_all(&empty_dir).unwrap();
    write_sequence(&dir, "b", 3, &[npy_bytes(&good_frame(3), "<f8")]);

    let opts = ImportOptions {
        skip_broken: true,
        ..ImportOptions::default()
    };
    let (pack, report) = import_mp_data(&dir, &opts, &ProgressBar::hidden()).unwrap();
    assert_eq!((pack.len(), report.clips), (2, 2));
    assert_eq!(
        (pack.lengths.clone(), pack.labels.clone(), pack.t_max),
        (vec![3, 1], vec![0, 1], 3)
    );
    assert_eq!(pack.group_names, ["Signer 2"]);
    let want: Vec<f32> = [0, 1, 5]
        .iter()
        .flat_map(|&k| good_frame(k))
        .map(|v| v as f32)
        .collect();
    assert_eq!(pack.clip(0), &want[..]);
    let skipped: Vec<_> = report.skipped.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        skipped,
        [
            nan_dir.join("1.npy"),
            cut_dir.join("0.npy"),
            wide_dir.join("0.npy"),
            empty_dir.clone()
        ]
    );
    assert_mentions(&report.skipped[0].1, &["value 40 is NaN"]);
    assert_mentions(&report.skipped[1].1, &["truncated"]);
    assert_mentions(&report.skipped[2].1, &["225 values"]);
    assert_mentions(&report.skipped[3].1, &["no .npy frames"]);

    // Without skip_broken the first broken file (in import order) fails the import.
    let e = data_error(import_mp_data(
        &dir,
        &ImportOptions::default(),
        &ProgressBar::hidden(),
    ));
    assert_mentions(
        &e,
        &[
            &nan_dir.join("1.npy").display().to_string(),
            "NaN",
            "skip_broken",
        ],
    );
    std::fs::remove_dir_all(&nan_dir).unwrap();
    let e = data_error(import_mp_data(
        &dir,
        &ImportOptions::default(),
        &ProgressBar::hidden(),
    ));
    assert_mentions(
        &e,
        &[&cut_dir.join("0.npy").display().to_string(), "truncated"],
    );

    // An integer array is broken too.
    write_sequence(&dir, "c", 0, &[npy_bytes(&good_frame(0), "<i8")]);
    let (_, report) = import_mp_data(&dir, &opts, &ProgressBar::hidden()).unwrap();
    assert_mentions(
        &report.skipped.last().unwrap().1,
        &["<i8", "float64 or float32"],
    );

    let nothing = root.path().join("empty");
    std::fs::create_dir_all(&nothing).unwrap();
    assert_mentions(
        &data_error(import_mp_data(&nothing, &opts, &ProgressBar::hidden())),
        &["no class folders"],
    );
}

// ---------------------------------------------------------------------------------------------
// Synthetic packs

#[test]
fn synth_is_deterministic_and_shaped_like_real_clips() {
    let pack = synth_clips(4, 6, 30, 11);
    assert_eq!(pack, synth_clips(4, 6, 30, 11));
    assert_ne!(pack, synth_clips(4, 6, 30, 12));
    assert_eq!(
        (pack.len(), pack.t_max, pack.landmarks.len()),
        (24, 30, 24 * 30 * 258)
    );
    assert!(pack.lengths.iter().all(|l| (12..=30).contains(l)));
    assert!(
        pack.lengths.iter().any(|&l| l != pack.lengths[0]),
        "lengths vary"
    );
    assert_eq!(pack.labels, (0..24).map(|i| i / 6).collect::<Vec<_>>());
    assert_eq!(pack.group_names.len(), 2);
    assert!(pack.groups.iter().all(|&g| g < 2) && pack.groups.contains(&1));
    assert_mentions(
        &pack.source,
        &["generated by signflow data synth", "not real signing"],
    );
    for i in 0..pack.len() {
        let clip = pack.clip(i);
        for frame in clip.chunks(258) {
            assert!(
                frame[..132].chunks(4).all(|p| (0.0..=1.0).contains(&p[3])),
                "visibility"
            );
            assert!(
                frame[195..].iter().any(|&v| v != 0.0),
                "the right hand is always shown"
            );
        }
        let start = (i * pack.t_max + pack.lengths[i]) * 258;
        assert!(pack.landmarks[start..(i + 1) * pack.t_max * 258]
            .iter()
            .all(|&v| v == 0.0));
        let features = pack.features(i, 32).unwrap();
        assert_eq!(features.len(), 32 * NUM_FEATURES);
        assert!(features.iter().all(|v| v.is_finite()));
    }
    // Short requests still give valid clips.
    let tiny = synth_clips(2, 2, 5, 0);
    assert!(tiny.lengths.iter().all(|&l| l == 5));
    assert_eq!(synth_clips(1, 1, 0, 0).lengths, [1]);
}

/// The classes are learnable: a nearest-centroid classifier on the features of half the clips
/// classifies the other half.
#[test]
fn synth_classes_are_separable() {
    let (classes, per_class) = (5, 12);
    let pack = synth_clips(classes, per_class, 32, 5);
    let features: Vec<Vec<f32>> = (0..pack.len())
        .map(|i| pack.features(i, 16).unwrap())
        .collect();
    let dim = features[0].len();
    let mut centroids = vec![vec![0f32; dim]; classes];
    for (i, f) in features.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        for (c, v) in centroids[pack.labels[i]].iter_mut().zip(f) {
            *c += v / (per_class / 2) as f32;
        }
    }
    let nearest = |f: &[f32]| {
        let d = |c: &Vec<f32>| c.iter().zip(f).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
        (0..classes)
            .min_by(|&a, &b| d(&centroids[a]).total_cmp(&d(&centroids[b])))
            .unwrap()
    };
    let test: Vec<usize> = (1..pack.len()).step_by(2).collect();
    let hits = test
        .iter()
        .filter(|&&i| nearest(&features[i]) == pack.labels[i])
        .count();
    assert!(
        hits * 10 >= test.len() * 9,
        "{hits} of {} held-out clips classified",
        test.len()
    );
}

#[test]
fn synth_packs_survive_save_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synth.safetensors");
    let pack = synth_clips(3, 3, 16, 1);
    pack.save(&path).unwrap();
    let loaded = ClipPack::load(&path).unwrap();
    assert_eq!(
        (
            loaded.lengths.clone(),
            loaded.labels.clone(),
            loaded.groups.clone()
        ),
        (
            pack.lengths.clone(),
            pack.labels.clone(),
            pack.groups.clone()
        )
    );
    let worst = loaded
        .landmarks
        .iter()
        .zip(&pack.landmarks)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "f16 storage error {worst}");
}

// ---------------------------------------------------------------------------------------------
// The real data set (48 MB; skipped where ../shared is absent)

#[test]
fn the_traduttore_pack_loads() {
    let path = shared().join("data/traduttore/clips.safetensors");
    if !path.exists() {
        eprintln!("skipped: {} is absent", path.display());
        return;
    }
    let pack = ClipPack::load(&path).unwrap();
    assert_eq!(
        (pack.len(), pack.classes.len(), pack.group_names.len()),
        (4693, 33, 3)
    );
    assert_eq!(pack.group_names, ["dmohazab", "TheCamNelson", "Alex"]);
    assert_eq!(pack.t_max, 20);
    let per_group = |g| pack.groups.iter().filter(|&&x| x == g).count();
    assert_eq!(
        (per_group(0), per_group(1), per_group(2)),
        (2190, 1933, 570)
    );
    assert!(pack.features(0, 64).unwrap().iter().all(|v| v.is_finite()));
}
