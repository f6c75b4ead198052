//! `signflow data subset`: a smaller clip pack drawn from a bigger one (some classes, some
//! groups, a number of clips of each class from each group, drawn with a seed), so that a
//! sample such as `data/demo/` can be re-made with one command.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use signflow::data::packs::FRAME_WIDTH;
use signflow::data::ClipPack;
use signflow::fsio::guard::check_writes;
use signflow::{Error, Result};

#[derive(Args)]
pub struct SubsetArgs {
    /// The clip pack to draw from.
    pub input: PathBuf,
    /// The clip pack to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// The classes to keep, in this order (comma-separated): the written pack's class list.
    #[arg(long, value_delimiter = ',', required = true)]
    pub classes: Vec<String>,
    /// The groups (signers) to keep, in this order (comma-separated); default: every group.
    #[arg(long, value_delimiter = ',')]
    pub groups: Option<Vec<String>>,
    /// Clips drawn at random from each class of each group (all of them where there are
    /// fewer); default: every clip.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub clips: Option<u64>,
    /// Seed of the random draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Text of the written pack's `license` metadata; default: the input's.
    #[arg(long)]
    pub license: Option<String>,
}

/// What to keep of a pack.
pub struct Selection<'a> {
    pub classes: &'a [String],
    /// None: every group of the pack.
    pub groups: Option<&'a [String]>,
    /// None: every clip of each kept class and group.
    pub clips: Option<usize>,
    pub seed: u64,
}

pub fn run(args: SubsetArgs) -> Result<()> {
    check_writes(&[("INPUT", &args.input)], &[("--output", &args.output)])?;
    let pack = ClipPack::load(&args.input)?;
    let mut sub = subset(
        &pack,
        &Selection {
            classes: &args.classes,
            groups: args.groups.as_deref(),
            clips: args.clips.map(|c| c as usize),
            seed: args.seed,
        },
    )
    .map_err(|detail| Error::data(&args.input, detail))?;
    if let Some(license) = args.license {
        sub.license = license;
    }
    sub.save(&args.output)?;
    eprintln!(
        "wrote {} clips of {} classes ({}) from groups {} to {}",
        sub.len(),
        sub.classes.len(),
        super::printable(&sub.classes.join(", ")),
        super::printable(&group_counts(&sub)),
        args.output.display()
    );
    Ok(())
}

/// Each group's name and clip count, e.g. `dmohazab (120), Alex (40)`.
pub fn group_counts(pack: &ClipPack) -> String {
    let mut counts = vec![0usize; pack.group_names.len()];
    for &g in &pack.groups {
        counts[g] += 1;
    }
    let parts: Vec<String> = pack
        .group_names
        .iter()
        .zip(counts)
        .map(|(name, n)| format!("{name} ({n})"))
        .collect();
    parts.join(", ")
}

/// The clips of `pack` that `sel` keeps, as a new pack: classes in `sel`'s order, groups in
/// `sel`'s order (or the pack's) less any left without clips, clips ordered by class, then
/// group, then their place in `pack`, and `t_max` the longest kept clip. One generator seeded
/// with `sel.seed` shuffles each (class, group) cell in that order before the first
/// `sel.clips` are taken, so the same pack and selection give the same subset.
///
/// The error (a sentence, for [`Error::data`]) names an unknown class or group with the
/// pack's lists, or a class that none of the kept groups recorded.
pub fn subset(pack: &ClipPack, sel: &Selection) -> std::result::Result<ClipPack, String> {
    let class_ids = indices_of("classes", sel.classes, &pack.classes)?;
    let group_ids = match sel.groups {
        Some(names) => indices_of("groups", names, &pack.group_names)?,
        None => (0..pack.group_names.len()).collect(),
    };
    let mut cells: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
    for (i, (&label, &group)) in pack.labels.iter().zip(&pack.groups).enumerate() {
        cells.entry((label, group)).or_default().push(i);
    }

    let mut rng = StdRng::seed_from_u64(sel.seed);
    let mut chosen: Vec<(usize, usize)> = Vec::new(); // (clip, position of its group)
    for (&class, name) in class_ids.iter().zip(sel.classes) {
        let before = chosen.len();
        for (g, &group) in group_ids.iter().enumerate() {
            let mut clips = cells.remove(&(class, group)).unwrap_or_default();
            if let Some(k) = sel.clips.filter(|&k| k < clips.len()) {
                clips.shuffle(&mut rng);
                clips.truncate(k);
                clips.sort_unstable();
            }
            chosen.extend(clips.into_iter().map(|i| (i, g)));
        }
        if chosen.len() == before {
            let groups: Vec<&str> = group_ids
                .iter()
                .map(|&g| pack.group_names[g].as_str())
                .collect();
            return Err(format!(
                "no clip of class `{name}` was recorded by the kept groups ({}); drop the class \
                 or keep a group that recorded it",
                groups.join(", ")
            ));
        }
    }

    // A kept group without clips is dropped; the others keep their order.
    let mut has_clips = vec![false; group_ids.len()];
    for &(_, g) in &chosen {
        has_clips[g] = true;
    }
    let new_group: Vec<usize> = has_clips
        .iter()
        .scan(0, |kept_before, &has| {
            let id = *kept_before;
            *kept_before += usize::from(has);
            Some(id)
        })
        .collect();
    let t_max = chosen
        .iter()
        .map(|&(i, _)| pack.lengths[i])
        .max()
        .unwrap_or(1);
    let mut sub = ClipPack {
        landmarks: vec![0.0; chosen.len() * t_max * FRAME_WIDTH],
        t_max,
        lengths: Vec::with_capacity(chosen.len()),
        labels: Vec::with_capacity(chosen.len()),
        groups: Vec::with_capacity(chosen.len()),
        classes: sel.classes.to_vec(),
        group_names: group_ids
            .iter()
            .zip(&has_clips)
            .filter(|(_, &has)| has)
            .map(|(&g, _)| pack.group_names[g].clone())
            .collect(),
        source: format!(
            "{} clips drawn by `signflow data subset` (seed {}) from: {}",
            chosen.len(),
            sel.seed,
            pack.source
        ),
        license: pack.license.clone(),
    };
    let new_class: HashMap<usize, usize> =
        class_ids.iter().enumerate().map(|(c, &o)| (o, c)).collect();
    for (k, &(i, g)) in chosen.iter().enumerate() {
        let frames = pack.clip(i);
        let start = k * t_max * FRAME_WIDTH;
        sub.landmarks[start..start + frames.len()].copy_from_slice(frames);
        sub.lengths.push(pack.lengths[i]);
        sub.labels.push(new_class[&pack.labels[i]]);
        sub.groups.push(new_group[g]);
    }
    Ok(sub)
}

/// The index in `all` of each of `names` (`list` says which list, e.g. `classes`); an unknown
/// name is an error that lists `all`, and so is a name given twice.
fn indices_of(
    list: &str,
    names: &[String],
    all: &[String],
) -> std::result::Result<Vec<usize>, String> {
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        let id = all
            .iter()
            .position(|a| a == name)
            .ok_or_else(|| format!("has no `{name}` among its {list}: {}", all.join(", ")))?;
        if ids.contains(&id) {
            return Err(format!(
                "`{name}` is asked for twice; name each of the {list} once"
            ));
        }
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signflow::data::synth_clips;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Three classes of ten clips each, the two generated signers alternating.
    fn pack() -> ClipPack {
        synth_clips(3, 10, 16, 7)
    }

    #[test]
    fn keeps_the_asked_classes_groups_and_counts_in_order() {
        let pack = pack();
        let classes = names(&["sign-02", "sign-00"]);
        let groups = names(&["synth-signer-b"]);
        let sel = Selection {
            classes: &classes,
            groups: Some(&groups),
            clips: Some(3),
            seed: 5,
        };
        let sub = subset(&pack, &sel).unwrap();
        assert_eq!(sub.classes, classes);
        assert_eq!(sub.group_names, groups);
        assert_eq!(sub.labels, [0, 0, 0, 1, 1, 1]);
        assert_eq!(sub.groups, [0; 6]);
        assert!(sub.source.ends_with(&pack.source) && sub.license == pack.license);
        // Each kept clip is one of the source's clips of that class and group, unchanged.
        for i in 0..sub.len() {
            let class = if sub.labels[i] == 0 { 2 } else { 0 };
            assert!(
                (0..pack.len()).any(|j| pack.labels[j] == class
                    && pack.groups[j] == 1
                    && pack.clip(j) == sub.clip(i)),
                "clip {i}"
            );
        }
        assert_eq!(
            subset(&pack, &sel).unwrap(),
            sub,
            "the same seed, the same draw"
        );
        let other = subset(&pack, &Selection { seed: 6, ..sel }).unwrap();
        assert_ne!(other.landmarks, sub.landmarks, "another seed, another draw");
    }

    #[test]
    fn without_limits_keeps_every_clip_of_the_classes() {
        let pack = pack();
        let classes = names(&["sign-01"]);
        let sub = subset(
            &pack,
            &Selection {
                classes: &classes,
                groups: None,
                clips: None,
                seed: 0,
            },
        )
        .unwrap();
        assert_eq!(sub.len(), 10);
        assert_eq!(sub.group_names, pack.group_names);
        let lengths: Vec<usize> = (0..pack.len())
            .filter(|&j| pack.labels[j] == 1)
            .map(|j| pack.lengths[j])
            .collect();
        assert_eq!(sub.t_max, *lengths.iter().max().unwrap());
    }

    #[test]
    fn a_group_left_without_clips_is_dropped() {
        let mut pack = pack();
        // Class 0 recorded by the first signer only.
        for j in 0..pack.len() {
            if pack.labels[j] == 0 {
                pack.groups[j] = 0;
            }
        }
        let classes = names(&["sign-00"]);
        let sub = subset(
            &pack,
            &Selection {
                classes: &classes,
                groups: None,
                clips: Some(4),
                seed: 0,
            },
        )
        .unwrap();
        assert_eq!(sub.group_names, names(&["synth-signer-a"]));
        assert_eq!(sub.groups, [0; 4]);
        let groups = names(&["synth-signer-b"]);
        let err = subset(
            &pack,
            &Selection {
                classes: &classes,
                groups: Some(&groups),
                clips: None,
                seed: 0,
            },
        )
        .unwrap_err();
        assert!(err.contains("no clip of class `sign-00`"), "{err}");
    }

    #[test]
    fn unknown_or_repeated_names_are_errors_that_list_the_pack() {
        let pack = pack();
        let run = |classes: &[&str], groups: Option<&[&str]>| {
            let classes = names(classes);
            let groups = groups.map(names);
            subset(
                &pack,
                &Selection {
                    classes: &classes,
                    groups: groups.as_deref(),
                    clips: None,
                    seed: 0,
                },
            )
            .unwrap_err()
        };
        let err = run(&["hello"], None);
        assert!(
            err.contains("`hello`") && err.contains("sign-00, sign-01, sign-02"),
            "{err}"
        );
        let err = run(&["sign-00"], Some(&["nobody"]));
        assert!(err.contains("synth-signer-a, synth-signer-b"), "{err}");
        let err = run(&["sign-00", "sign-00"], None);
        assert!(err.contains("twice"), "{err}");
    }
}
