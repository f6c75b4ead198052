//! Train/validation splits of a dataset, as the command line names them: `random:FRACTION`
//! (stratified by class) or `group:NAME` (hold out one recorder's clips).
//!
//! A random split puts clips recorded in one sitting on both sides, which flatters accuracy
//! (`../shared/data/README.md`); a group split measures how a model does on a signer it has
//! never seen, so report both.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::packs::{ClipPack, Dataset};
use crate::error::{Error, Result};

/// What `--split` accepts, for error messages.
const SPLIT_FORMS: &str = "random:FRACTION with 0 < FRACTION < 1 (e.g. random:0.2), or \
                           group:NAME naming one of the clip pack's groups (e.g. group:Alex)";

/// How to split a dataset into training and validation clips.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitSpec {
    /// `random:FRACTION`: about `fraction` of each class's clips go to validation (see
    /// [`split`] for the rounding).
    Random { fraction: f64 },
    /// `group:NAME`: the named group's clips are validation, every other group's are training
    /// (clip packs only; see [`split`] for the classes no other group recorded).
    Group { name: String },
}

impl FromStr for SplitSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidConfig {
            field: "split",
            value: format!("{s:?}"),
            allowed: SPLIT_FORMS,
        };
        let (kind, arg) = s.split_once(':').ok_or_else(invalid)?;
        match kind.trim() {
            "random" => {
                let fraction: f64 = arg.trim().parse().map_err(|_| invalid())?;
                // `0 < f < 1` is false for NaN too.
                if !(fraction > 0.0 && fraction < 1.0) {
                    return Err(invalid());
                }
                Ok(SplitSpec::Random { fraction })
            }
            "group" if !arg.trim().is_empty() => Ok(SplitSpec::Group {
                name: arg.trim().to_string(),
            }),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for SplitSpec {
    /// The command-line form, which [`SplitSpec::from_str`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitSpec::Random { fraction } => write!(f, "random:{fraction}"),
            SplitSpec::Group { name } => write!(f, "group:{name}"),
        }
    }
}

/// The clips (indices into the pack) of each side, both in ascending order, and a sentence for
/// the log that says what the split did (sizes, and any clips left out and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub note: String,
}

/// Splits `dataset` as `spec` says; `seed` drives the random split (a group split draws
/// nothing).
///
/// `random:FRACTION` is stratified: each class's clips are shuffled (one [`StdRng`] seeded with
/// `seed`, classes taken in index order) and the first `k` go to validation, where `k` is
/// `FRACTION · count` rounded to the nearest integer (halves away from zero) and then clamped
/// to `1 ..= count − 1`, so that every class with at least two clips is both trained on and
/// measured. A class with a single clip stays in training. Works for clip and feature packs.
///
/// `group:NAME` (clip packs only): every clip of the other groups is training. The named
/// group's clips whose class some other group also recorded are validation; its clips of
/// classes no other group recorded are left out of both sides, since a model trained on the
/// others cannot predict a class it never saw, and [`Split::note`] says how many were left out
/// and of which classes.
///
/// Errors: a group split of a feature pack, a group that is not in the pack (the message lists
/// the pack's groups), and a split that would leave either side empty.
pub fn split(dataset: &Dataset, spec: &SplitSpec, seed: u64) -> Result<Split> {
    match (spec, dataset) {
        (SplitSpec::Random { fraction }, _) => {
            random(dataset.labels(), dataset.classes(), *fraction, seed)
        }
        (SplitSpec::Group { name }, Dataset::Clips(pack)) => group(pack, name),
        (SplitSpec::Group { name }, Dataset::Features(_)) => Err(Error::data(
            format!("split group:{name}"),
            "feature packs have no groups; use random:FRACTION, or split the clip pack by group \
             before computing its features",
        )),
    }
}

fn random(labels: &[usize], classes: &[String], fraction: f64, seed: u64) -> Result<Split> {
    let spec = format!("split random:{fraction}");
    // Parsing checks this too, but a SplitSpec can also be built directly.
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::InvalidConfig {
            field: "split",
            value: format!("random:{fraction}"),
            allowed: SPLIT_FORMS,
        });
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes.len()];
    for (i, &label) in labels.iter().enumerate() {
        by_class
            .get_mut(label)
            .ok_or_else(|| bad_label(i, label, classes.len()))?
            .push(i);
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let mut singles = Vec::new();
    for (class, clips) in by_class.iter_mut().enumerate() {
        if clips.len() == 1 {
            singles.push(classes[class].as_str());
        }
        if clips.len() < 2 {
            train.extend_from_slice(clips);
            continue;
        }
        clips.shuffle(&mut rng);
        let k = ((fraction * clips.len() as f64).round() as usize).clamp(1, clips.len() - 1);
        val.extend_from_slice(&clips[..k]);
        train.extend_from_slice(&clips[k..]);
    }
    if val.is_empty() {
        return Err(Error::data(
            spec,
            "no class has two clips, so there is nothing to put in validation without losing a \
             class from training; add clips or validate on another pack",
        ));
    }
    train.sort_unstable();
    val.sort_unstable();

    let mut note = format!(
        "random split, {fraction} of each class (seed {seed}): {} training and {} validation \
         clips",
        train.len(),
        val.len()
    );
    if !singles.is_empty() {
        note += &format!(
            "; {} class(es) with a single clip kept in training only: {}",
            singles.len(),
            singles.join(", ")
        );
    }
    Ok(Split { train, val, note })
}

fn group(pack: &ClipPack, name: &str) -> Result<Split> {
    let spec = format!("split group:{name}");
    if pack.groups.len() != pack.labels.len() {
        return Err(Error::data(
            spec,
            format!(
                "the pack has {} group entries for {} clips; rebuild it with one group per clip",
                pack.groups.len(),
                pack.labels.len()
            ),
        ));
    }
    let mut counts = vec![0usize; pack.group_names.len()];
    for (i, &g) in pack.groups.iter().enumerate() {
        *counts.get_mut(g).ok_or_else(|| {
            Error::data(
                &spec,
                format!(
                    "clip {i} has group {g}, but the pack names only {} groups; rebuild the pack",
                    pack.group_names.len()
                ),
            )
        })? += 1;
    }
    let listing = || {
        let groups: Vec<String> = pack
            .group_names
            .iter()
            .zip(&counts)
            .map(|(g, &c)| format!("{g} ({c} clip{})", if c == 1 { "" } else { "s" }))
            .collect();
        groups.join(", ")
    };
    let held = pack
        .group_names
        .iter()
        .position(|g| g == name)
        .ok_or_else(|| {
            Error::data(
                &spec,
                format!(
                    "the pack has no group `{name}`; its groups are: {}",
                    listing()
                ),
            )
        })?;
    if counts[held] == 0 {
        return Err(Error::data(
            &spec,
            format!("group `{name}` has no clips; pick one of: {}", listing()),
        ));
    }

    let mut seen_elsewhere = vec![false; pack.classes.len()];
    for (i, (&label, &g)) in pack.labels.iter().zip(&pack.groups).enumerate() {
        let seen = seen_elsewhere
            .get_mut(label)
            .ok_or_else(|| bad_label(i, label, pack.classes.len()))?;
        *seen |= g != held;
    }

    let (mut train, mut val, mut left_out) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (&label, &g)) in pack.labels.iter().zip(&pack.groups).enumerate() {
        if g != held {
            train.push(i);
        } else if seen_elsewhere[label] {
            val.push(i);
        } else {
            left_out.push(i);
        }
    }
    if train.is_empty() {
        return Err(Error::data(
            &spec,
            format!(
                "every clip is in group `{name}`, which leaves nothing to train on; a group \
                 split needs at least two groups ({})",
                listing()
            ),
        ));
    }
    if val.is_empty() {
        return Err(Error::data(
            &spec,
            format!(
                "no other group recorded any class of group `{name}`, so none of its clips can \
                 be validated on; hold out another group ({})",
                listing()
            ),
        ));
    }

    let mut note = format!(
        "group split, `{name}` held out: {} training clips from the other groups, {} \
         validation clips",
        train.len(),
        val.len()
    );
    if !left_out.is_empty() {
        let unseen: BTreeSet<usize> = left_out.iter().map(|&i| pack.labels[i]).collect();
        let names: Vec<&str> = unseen.iter().map(|&c| pack.classes[c].as_str()).collect();
        note += &format!(
            "; {} clips of {} class(es) that no other group recorded left out of both: {}",
            left_out.len(),
            names.len(),
            names.join(", ")
        );
    }
    Ok(Split { train, val, note })
}

fn bad_label(clip: usize, label: usize, classes: usize) -> Error {
    Error::data(
        format!("clip {clip}"),
        format!("has label {label}, but the pack names only {classes} classes; rebuild the pack"),
    )
}
