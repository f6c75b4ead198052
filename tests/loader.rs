//! Splits, augmentation and the batch loader, on small hand-made packs.

use std::collections::BTreeSet;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use signflow::data::augment::{augment_clip, AugmentConfig};
use signflow::data::loader::{Loader, LoaderConfig, Source};
use signflow::data::packs::{ClipPack, Dataset, FeaturePack, FRAME_WIDTH};
use signflow::data::split::{split, SplitSpec};

const POSE: usize = 132;
const HAND: usize = 63;

/// One plausible frame: a body around the image centre that moves with `t`, a right hand, and a
/// left hand only when `left` (a missing hand is all zeros, as MediaPipe writes it).
fn frame(clip: usize, t: usize, left: bool) -> Vec<f32> {
    let wobble = |k: usize| 0.02 * ((clip * 7 + t * 3 + k) as f32 * 0.37).sin();
    let mut f = vec![0.0; FRAME_WIDTH];
    for p in 0..33 {
        f[4 * p] = 0.3 + 0.4 * (p as f32 / 33.0) + wobble(p);
        f[4 * p + 1] = 0.2 + 0.02 * p as f32 + wobble(p + 40);
        f[4 * p + 2] = -0.1 + 0.005 * p as f32;
        f[4 * p + 3] = 0.9;
    }
    for (hand, present) in [(POSE, left), (POSE + HAND, true)] {
        if present {
            for q in 0..21 {
                f[hand + 3 * q] = 0.45 + 0.01 * q as f32 + wobble(q + 80);
                f[hand + 3 * q + 1] = 0.6 - 0.01 * q as f32;
                f[hand + 3 * q + 2] = 0.001 * q as f32;
            }
        }
    }
    f
}

/// A clip pack with one clip per `(label, group, length)`, padded to the longest clip.
fn clip_pack(clips: &[(usize, usize, usize)], classes: &[&str], groups: &[&str]) -> ClipPack {
    let t_max = clips.iter().map(|c| c.2).max().unwrap_or(1);
    let mut landmarks = vec![0.0; clips.len() * t_max * FRAME_WIDTH];
    for (i, &(_, _, len)) in clips.iter().enumerate() {
        for t in 0..len {
            let at = (i * t_max + t) * FRAME_WIDTH;
            landmarks[at..at + FRAME_WIDTH].copy_from_slice(&frame(i, t, i % 3 != 0));
        }
    }
    ClipPack {
        landmarks,
        t_max,
        lengths: clips.iter().map(|c| c.2).collect(),
        labels: clips.iter().map(|c| c.0).collect(),
        groups: clips.iter().map(|c| c.1).collect(),
        classes: classes.iter().map(|s| s.to_string()).collect(),
        group_names: groups.iter().map(|s| s.to_string()).collect(),
        source: "hand-made for tests/loader.rs".into(),
        license: "MIT".into(),
    }
}

/// `n` clips of lengths 8 to 14 spread over 3 classes, one group.
fn small_pack(n: usize) -> ClipPack {
    let clips: Vec<_> = (0..n).map(|i| (i % 3, 0, 8 + i % 7)).collect();
    clip_pack(&clips, &["hello", "thanks", "water"], &["only"])
}

fn labels_pack(labels: &[usize], classes: &[&str]) -> Dataset {
    let clips: Vec<_> = labels.iter().map(|&l| (l, 0, 2)).collect();
    Dataset::Clips(clip_pack(&clips, classes, &["g"]))
}

// ---------------------------------------------------------------------------------------------
// Splits

#[test]
fn split_spec_parses_both_forms_and_prints_them_back() {
    let random: SplitSpec = "random:0.2".parse().unwrap();
    assert_eq!(random, SplitSpec::Random { fraction: 0.2 });
    let group: SplitSpec = "group:TheCamNelson".parse().unwrap();
    assert_eq!(
        group,
        SplitSpec::Group {
            name: "TheCamNelson".into()
        }
    );
    for spec in [random, group] {
        assert_eq!(spec.to_string().parse::<SplitSpec>().unwrap(), spec);
    }
}

#[test]
fn split_spec_rejects_malformed_strings_saying_what_is_accepted() {
    for bad in [
        "",
        "random",
        "random:",
        "random:0",
        "random:1",
        "random:1.5",
        "random:-0.1",
        "random:NaN",
        "random:twenty",
        "group:",
        "group:  ",
        "kfold:5",
    ] {
        let err = bad.parse::<SplitSpec>().unwrap_err().to_string();
        assert!(
            err.contains("random:FRACTION") && err.contains("group:NAME"),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn random_split_is_stratified_with_documented_rounding() {
    // Class sizes 10, 5, 1, 2, 3 → validation round(0.2·count) clamped to 1..=count−1:
    // 2, 1, 0 (a single clip stays in training), 1 (0.4 rounds to 0, raised to 1), 1.
    let sizes = [10, 5, 1, 2, 3];
    let labels: Vec<usize> = sizes
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| std::iter::repeat_n(c, n))
        .collect();
    let data = labels_pack(&labels, &["a", "b", "lonely", "d", "e"]);
    let s = split(&data, &SplitSpec::Random { fraction: 0.2 }, 7).unwrap();

    let mut val_per_class = [0; 5];
    for &i in &s.val {
        val_per_class[labels[i]] += 1;
    }
    assert_eq!(val_per_class, [2, 1, 0, 1, 1]);
    assert!(s.train.windows(2).all(|w| w[0] < w[1]));
    assert!(s.val.windows(2).all(|w| w[0] < w[1]));
    let all: BTreeSet<usize> = s.train.iter().chain(&s.val).copied().collect();
    assert_eq!(all.len(), labels.len());
    assert_eq!(s.train.len() + s.val.len(), labels.len());
    assert!(s.note.contains("lonely"), "{}", s.note);

    // A fraction that would take every clip of a class still leaves one in training.
    let most = split(&data, &SplitSpec::Random { fraction: 0.95 }, 7).unwrap();
    for (c, &n) in sizes.iter().enumerate() {
        let train = most.train.iter().filter(|&&i| labels[i] == c).count();
        assert_eq!(train, 1, "class {c} of {n} clips");
    }
}

#[test]
fn random_split_depends_on_the_seed_only() {
    let labels: Vec<usize> = (0..60).map(|i| i % 3).collect();
    let data = labels_pack(&labels, &["a", "b", "c"]);
    let spec = SplitSpec::Random { fraction: 0.25 };
    let a = split(&data, &spec, 1).unwrap();
    assert_eq!(a, split(&data, &spec, 1).unwrap());
    assert_ne!(a.val, split(&data, &spec, 2).unwrap().val);
}

#[test]
fn random_split_works_for_feature_packs_and_group_split_does_not() {
    let pack = FeaturePack {
        features: vec![0.5; 6 * 2 * 3],
        mask: vec![true; 6 * 2],
        labels: vec![0, 0, 0, 1, 1, 1],
        n: 6,
        t: 2,
        num_features: 3,
        classes: vec!["a".into(), "b".into()],
    };
    let data = Dataset::Features(pack);
    let s = split(&data, &SplitSpec::Random { fraction: 0.34 }, 0).unwrap();
    assert_eq!((s.train.len(), s.val.len()), (4, 2));
    let err = split(&data, &"group:Alex".parse().unwrap(), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("feature packs have no groups"), "{err}");
}

#[test]
fn random_split_rejects_bad_fractions_and_packs_without_a_class_of_two_clips() {
    let data = labels_pack(&[0, 1, 2], &["a", "b", "c"]);
    for fraction in [0.0, 1.0, f64::NAN] {
        let err = split(&data, &SplitSpec::Random { fraction }, 0).unwrap_err();
        assert!(err.to_string().contains("random:FRACTION"), "{err}");
    }
    let err = split(&data, &SplitSpec::Random { fraction: 0.5 }, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no class has two clips"), "{err}");
}

/// Groups A, B, C, D and classes x (recorded by A, B, C), y (A, C), z (B only), w (C only),
/// v (D only).
fn grouped_pack() -> ClipPack {
    let (x, y, z, w, v) = (0, 1, 2, 3, 4);
    let (a, b, c, d) = (0, 1, 2, 3);
    let clips = [
        (x, a, 3),
        (y, a, 3),
        (x, b, 3),
        (z, b, 3),
        (x, c, 3),
        (y, c, 3),
        (w, c, 3),
        (w, c, 3),
        (x, c, 3),
        (v, d, 3),
    ];
    clip_pack(&clips, &["x", "y", "z", "w", "v"], &["A", "B", "C", "D"])
}

#[test]
fn group_split_holds_out_one_group_and_leaves_out_its_unseen_classes() {
    let data = Dataset::Clips(grouped_pack());
    let s = split(&data, &"group:C".parse().unwrap(), 0).unwrap();
    assert_eq!(s.train, vec![0, 1, 2, 3, 9]);
    assert_eq!(s.val, vec![4, 5, 8]);
    assert!(
        s.note.contains("2 clips of 1 class(es)") && s.note.contains(": w"),
        "{}",
        s.note
    );

    let s = split(&data, &"group:A".parse().unwrap(), 0).unwrap();
    assert_eq!(s.val, vec![0, 1]);
    assert_eq!(s.train, vec![2, 3, 4, 5, 6, 7, 8, 9]);
    assert!(!s.note.contains("left out"), "{}", s.note);
}

#[test]
fn group_split_errors_name_the_groups() {
    let data = Dataset::Clips(grouped_pack());
    let err = split(&data, &"group:E".parse().unwrap(), 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no group `E`")
            && err.contains("A (2 clips), B (2 clips), C (5 clips), D (1 clip)"),
        "{err}"
    );
    // D recorded only a class no other group did: nothing to validate on.
    let err = split(&data, &"group:D".parse().unwrap(), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no other group recorded"), "{err}");

    let one = Dataset::Clips(clip_pack(&[(0, 0, 2), (0, 0, 2)], &["x"], &["solo"]));
    let err = split(&one, &"group:solo".parse().unwrap(), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least two groups"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Augmentation

fn clip_frames(clip: usize, n: usize, left: bool) -> Vec<f32> {
    (0..n).flat_map(|t| frame(clip, t, left)).collect()
}

fn hand_is_missing(frame: &[f32], hand: usize) -> bool {
    frame[hand..hand + HAND].iter().all(|&v| v == 0.0)
}

#[test]
fn augment_keeps_the_width_and_missing_hands_and_stretches_within_bounds() {
    let n = 20;
    let frames = clip_frames(1, n, false);
    let cfg = AugmentConfig {
        mirror: true,
        ..AugmentConfig::default()
    };
    let mut mirrored = 0;
    for seed in 0..40 {
        let (out, m) = augment_clip(&frames, n, &cfg, &mut StdRng::seed_from_u64(seed));
        assert_eq!(out.len(), m * FRAME_WIDTH);
        assert!((16..=24).contains(&m), "seed {seed}: {m} frames");
        assert!(out.iter().all(|v| v.is_finite()));
        // The left hand is missing throughout; mirrored, the right one is.
        let first = out.chunks_exact(FRAME_WIDTH).next().unwrap();
        let missing = if hand_is_missing(first, POSE) {
            POSE
        } else {
            mirrored += 1;
            POSE + HAND
        };
        let present = 2 * POSE + HAND - missing;
        for f in out.chunks_exact(FRAME_WIDTH) {
            assert!(hand_is_missing(f, missing), "seed {seed}");
            assert!(!hand_is_missing(f, present), "seed {seed}");
        }
    }
    assert!((5..=35).contains(&mirrored), "mirrored {mirrored} of 40");
}

#[test]
fn augment_is_deterministic_per_seed_and_none_changes_nothing() {
    let frames = clip_frames(2, 12, true);
    let cfg = AugmentConfig::default();
    let run = |seed| augment_clip(&frames, 12, &cfg, &mut StdRng::seed_from_u64(seed));
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
    let (out, m) = augment_clip(
        &frames,
        12,
        &AugmentConfig::none(),
        &mut StdRng::seed_from_u64(5),
    );
    assert_eq!((out, m), (frames, 12));
}

#[test]
fn spatial_augmentation_moves_only_x_and_y() {
    let frames = clip_frames(3, 6, true);
    let cfg = AugmentConfig {
        stretch: 0.0,
        time_mask_spans: 0,
        ..AugmentConfig::default()
    };
    let (out, m) = augment_clip(&frames, 6, &cfg, &mut StdRng::seed_from_u64(9));
    assert_eq!(m, 6);
    for (a, b) in frames
        .chunks_exact(FRAME_WIDTH)
        .zip(out.chunks_exact(FRAME_WIDTH))
    {
        for p in 0..33 {
            assert_eq!(
                &a[4 * p + 2..4 * p + 4],
                &b[4 * p + 2..4 * p + 4],
                "pose z, visibility"
            );
            assert_ne!(a[4 * p], b[4 * p]);
        }
        for q in 0..42 {
            assert_eq!(a[POSE + 3 * q + 2], b[POSE + 3 * q + 2], "hand z");
        }
    }
}

#[test]
fn mirror_flips_x_and_swaps_sides() {
    let frames = clip_frames(4, 3, true);
    let cfg = AugmentConfig {
        mirror: true,
        ..AugmentConfig::none()
    };
    let (out, _) = (0..)
        .map(|seed| augment_clip(&frames, 3, &cfg, &mut StdRng::seed_from_u64(seed)))
        .find(|(out, _)| *out != frames)
        .unwrap();
    let (a, b) = (&frames[..FRAME_WIDTH], &out[..FRAME_WIDTH]);
    let close = |u: f32, v: f32| (u - v).abs() < 1e-6;
    // Nose (0) stays, x mirrored; left shoulder (11) and right shoulder (12) trade places.
    assert!(close(b[0], 1.0 - a[0]) && b[1] == a[1]);
    assert!(close(b[4 * 11], 1.0 - a[4 * 12]) && b[4 * 11 + 1] == a[4 * 12 + 1]);
    assert!(close(b[4 * 12], 1.0 - a[4 * 11]));
    // The left hand's wrist is the right hand's, mirrored.
    assert!(close(b[POSE], 1.0 - a[POSE + HAND]) && b[POSE + 1] == a[POSE + HAND + 1]);
    assert!(close(b[POSE + HAND], 1.0 - a[POSE]));
}

#[test]
fn augment_config_rejects_out_of_range_strengths() {
    for cfg in [
        AugmentConfig {
            stretch: 1.0,
            ..AugmentConfig::default()
        },
        AugmentConfig {
            scale: -0.1,
            ..AugmentConfig::default()
        },
        AugmentConfig {
            rotate_degrees: f32::NAN,
            ..AugmentConfig::default()
        },
    ] {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("augment."), "{err}");
    }
    AugmentConfig::default().validate().unwrap();
    AugmentConfig::none().validate().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Loader

fn loader(pack: ClipPack, config: LoaderConfig) -> Loader {
    Loader::new(Source::all(Arc::new(Dataset::Clips(pack))).unwrap(), config).unwrap()
}

fn config(workers: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 5,
        seq_len: 16,
        shuffle: true,
        seed: 42,
        augment: Some(AugmentConfig {
            mirror: true,
            ..AugmentConfig::default()
        }),
        num_workers: workers,
        drop_last: false,
    }
}

#[test]
fn batches_are_the_same_whatever_the_number_of_workers() {
    let pack = small_pack(23);
    let collect = |workers| {
        let l = loader(pack.clone(), config(workers));
        l.epoch(3).map(|b| b.unwrap()).collect::<Vec<_>>()
    };
    let inline = collect(0);
    assert_eq!(inline.len(), 5);
    assert_eq!(collect(1), inline);
    assert_eq!(collect(3), inline);
    assert_eq!(collect(8), inline);
}

#[test]
fn an_epoch_resumed_mid_way_gives_the_same_later_batches() {
    let pack = small_pack(23);
    let whole = loader(pack.clone(), config(0))
        .epoch(2)
        .map(|b| b.unwrap())
        .collect::<Vec<_>>();
    for workers in [0, 1, 3] {
        let l = loader(pack.clone(), config(workers));
        for first in [0, 2, 4, 5, 9] {
            let rest: Vec<_> = l.epoch_from(2, first).map(|b| b.unwrap()).collect();
            assert_eq!(
                rest,
                whole[first.min(whole.len())..],
                "from batch {first}, {workers} workers"
            );
        }
    }
}

#[test]
fn an_epoch_covers_every_clip_once_with_a_smaller_last_batch() {
    let l = loader(small_pack(23), config(2));
    assert_eq!(l.num_batches(), 5);
    let mut orders = Vec::new();
    for epoch in 0..2 {
        let batches: Vec<_> = l.epoch(epoch).map(|b| b.unwrap()).collect();
        let sizes: Vec<usize> = batches.iter().map(|(b, _)| b.batch).collect();
        assert_eq!(sizes, [5, 5, 5, 5, 3]);
        let ids: Vec<usize> = batches.iter().flat_map(|(_, ids)| ids.clone()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..23).collect::<Vec<_>>());
        for (b, ids) in &batches {
            assert_eq!(b.seq, 16);
            assert_eq!(b.num_features, l.num_features());
            assert_eq!(b.features.len(), b.batch * 16 * b.num_features);
            assert!(b.mask.iter().all(|&m| m == 1.0));
            assert_eq!(b.labels, ids.iter().map(|i| i % 3).collect::<Vec<_>>());
        }
        assert_eq!(ids, l.order(epoch));
        orders.push(ids);
    }
    assert_ne!(orders[0], orders[1], "a new epoch shuffles anew");

    let dropped = loader(
        small_pack(23),
        LoaderConfig {
            drop_last: true,
            ..config(0)
        },
    );
    assert_eq!(dropped.num_batches(), 4);
    assert_eq!(dropped.epoch(0).count(), 4);
}

#[test]
fn without_shuffle_the_source_order_is_kept() {
    let data = Arc::new(Dataset::Clips(small_pack(10)));
    let source = Source::new(data, vec![7, 2, 9, 4]).unwrap();
    let cfg = LoaderConfig {
        shuffle: false,
        augment: None,
        ..config(1)
    };
    let l = Loader::new(source, cfg).unwrap();
    let ids: Vec<Vec<usize>> = l.epoch(5).map(|b| b.unwrap().1).collect();
    assert_eq!(ids, [vec![7, 2, 9, 4]]);
}

#[test]
fn a_non_finite_frame_is_an_error_naming_the_clip_and_ends_the_epoch() {
    let mut pack = small_pack(23);
    let at = (7 * pack.t_max + 2) * FRAME_WIDTH + 140;
    pack.landmarks[at] = f32::NAN;
    for workers in [0, 3] {
        let l = loader(pack.clone(), config(workers));
        let items: Vec<_> = l.epoch(0).collect();
        let failed = items.iter().position(|i| i.is_err()).unwrap();
        assert_eq!(failed, items.len() - 1, "nothing after the error");
        let err = items[failed].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("clip 7") && err.contains("frame 2") && err.contains("NaN"),
            "{err}"
        );
    }
}

#[test]
fn dropping_an_epoch_early_stops_its_workers() {
    let l = loader(small_pack(40), config(3));
    let first = l.epoch(0).next().unwrap().unwrap();
    assert_eq!(first.0.batch, 5);
    // Dropped after one batch: returning at all means the workers were joined.
    let mut it = l.epoch(1);
    it.next().unwrap().unwrap();
    drop(it);
}

#[test]
fn feature_packs_are_taken_as_they_are() {
    let (n, t, f) = (5, 4, 3);
    let features: Vec<f32> = (0..n * t * f).map(|v| v as f32).collect();
    let mut mask = vec![true; n * t];
    mask[t + 3] = false; // clip 1's last frame is padding
    let pack = FeaturePack {
        features: features.clone(),
        mask,
        labels: vec![0, 1, 0, 1, 1],
        n,
        t,
        num_features: f,
        classes: vec!["a".into(), "b".into()],
    };
    let source = Source::all(Arc::new(Dataset::Features(pack))).unwrap();
    let cfg = LoaderConfig {
        shuffle: false,
        batch_size: 2,
        seq_len: 64, // ignored: a feature pack keeps its own t
        ..config(2)
    };
    let l = Loader::new(source, cfg).unwrap();
    assert_eq!((l.seq_len(), l.num_features()), (t, f));
    let batches: Vec<_> = l.epoch(0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 3);
    let (b, ids) = &batches[0];
    assert_eq!(ids, &[0, 1]);
    assert_eq!(b.labels, [0, 1]);
    assert_eq!(b.mask, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
    assert_eq!(&b.features[..7 * f], &features[..7 * f]);
    assert_eq!(
        &b.features[7 * f..],
        &[0.0; 3],
        "padding comes out as zeros"
    );
}

#[test]
fn bad_sources_and_configs_are_errors() {
    let data = Arc::new(Dataset::Clips(small_pack(4)));
    let err = Source::new(Arc::clone(&data), vec![0, 4])
        .unwrap_err()
        .to_string();
    assert!(err.contains("clip 4") && err.contains("4 clips"), "{err}");

    let empty = Source::new(Arc::clone(&data), vec![]).unwrap();
    assert!(Loader::new(empty, config(0)).is_err());

    let all = || Source::all(Arc::clone(&data)).unwrap();
    let zero = LoaderConfig {
        batch_size: 0,
        ..config(0)
    };
    assert!(Loader::new(all(), zero)
        .unwrap_err()
        .to_string()
        .contains("batch_size"));
    let too_big = LoaderConfig {
        batch_size: 5,
        drop_last: true,
        ..config(0)
    };
    assert!(Loader::new(all(), too_big).is_err());
    let bad_augment = LoaderConfig {
        augment: Some(AugmentConfig {
            shift: -1.0,
            ..AugmentConfig::default()
        }),
        ..config(0)
    };
    assert!(Loader::new(all(), bad_augment)
        .unwrap_err()
        .to_string()
        .contains("augment.shift"));

    let mut short = small_pack(4);
    short.landmarks.pop();
    let err = Source::all(Arc::new(Dataset::Clips(short)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("malformed"), "{err}");
}
