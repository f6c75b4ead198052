//! The batches the trainer consumes: a [`Source`] (a dataset and the clips of it to use) cut
//! into batches in a per-epoch order, prepared ahead by worker threads.
//!
//! Everything random is a function of the seed, the epoch and the clip, never of which thread
//! did the work or when: the order of an epoch is shuffled by a generator seeded from
//! `(seed, epoch)`, and each clip is augmented by one seeded from `(seed, epoch, clip index)`.
//! So the batches of an epoch are the same whatever `num_workers` is, and a resumed run sees
//! the batches an unbroken one would have.
//!
//! Clips (a clip pack) are augmented when asked, then preprocessed to `seq_len` frames of
//! [`NUM_FEATURES`] features; since preprocessing resamples every clip to `seq_len`, all their
//! frames are real (mask 1.0). Feature packs are ready model input and are taken as they are:
//! their own `t` frames and mask, no resampling, no augmentation.

use std::fmt;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::augment::{augment_clip, AugmentConfig};
use super::batch::Batch;
use super::features::{preprocess, NUM_FEATURES};
use super::packs::{ClipPack, Dataset, FeaturePack, FRAME_WIDTH};
use crate::error::{Error, Result};

/// A dataset and the clips of it to load (indices into the pack, for example one side of a
/// [`Split`](super::split::Split)). The dataset is shared, so the training and validation
/// sources of one pack hold a single copy of it.
#[derive(Clone)]
pub struct Source {
    dataset: Arc<Dataset>,
    indices: Vec<usize>,
}

/// Sizes only: the derived form would print every landmark of the pack.
impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match *self.dataset {
            Dataset::Clips(_) => "clips",
            Dataset::Features(_) => "features",
        };
        f.debug_struct("Source")
            .field(
                "dataset",
                &format_args!("{kind}, {} in the pack", self.dataset.len()),
            )
            .field("clips", &self.indices.len())
            .finish()
    }
}

impl Source {
    /// Checks that the pack's buffers fit its sizes (so that no clip can be read out of
    /// bounds) and that every index names a clip of it.
    pub fn new(dataset: Arc<Dataset>, indices: Vec<usize>) -> Result<Source> {
        let n = checked_len(&dataset)?;
        if let Some(&i) = indices.iter().find(|&&i| i >= n) {
            return Err(Error::data(
                format!("clip {i}"),
                format!("is not in the pack, which has {n} clips (indices start at 0)"),
            ));
        }
        Ok(Source { dataset, indices })
    }

    /// Every clip of the dataset, in pack order.
    pub fn all(dataset: Arc<Dataset>) -> Result<Source> {
        let n = checked_len(&dataset)?;
        Ok(Source {
            dataset,
            indices: (0..n).collect(),
        })
    }

    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The clips to load, as indices into the pack.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

/// The pack's clip count, once its buffers are known to fit its sizes.
fn checked_len(dataset: &Dataset) -> Result<usize> {
    let mismatch = |detail: String| {
        Err(Error::data(
            "dataset",
            format!("{detail}; the pack is malformed, rebuild it"),
        ))
    };
    match dataset {
        Dataset::Clips(p) => {
            let n = p.len();
            if p.labels.len() != n {
                return mismatch(format!("{} labels for {n} clips", p.labels.len()));
            }
            if p.landmarks.len() != n * p.t_max * FRAME_WIDTH {
                return mismatch(format!(
                    "{} landmark values for {n} clips of up to {} frames × {FRAME_WIDTH} (need {})",
                    p.landmarks.len(),
                    p.t_max,
                    n * p.t_max * FRAME_WIDTH
                ));
            }
            Ok(n)
        }
        Dataset::Features(p) => {
            if p.labels.len() != p.n
                || p.mask.len() != p.n * p.t
                || p.features.len() != p.n * p.t * p.num_features
            {
                return mismatch(format!(
                    "{} clips of {} frames × {} features need {} labels, {} mask values and {} \
                     feature values; got {}, {} and {}",
                    p.n,
                    p.t,
                    p.num_features,
                    p.n,
                    p.n * p.t,
                    p.n * p.t * p.num_features,
                    p.labels.len(),
                    p.mask.len(),
                    p.features.len()
                ));
            }
            Ok(p.n)
        }
    }
}

/// How to batch a [`Source`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Clips per batch (the last batch of an epoch may be smaller, see `drop_last`).
    pub batch_size: usize,
    /// Frames per clip after preprocessing (clip packs; a feature pack keeps its own `t`).
    pub seq_len: usize,
    /// Shuffle the clips every epoch; otherwise they come in the source's order.
    pub shuffle: bool,
    pub seed: u64,
    /// Augment clips before preprocessing (clip packs only; ignored, with a warning, for a
    /// feature pack).
    pub augment: Option<AugmentConfig>,
    /// Threads preparing batches ahead of the consumer; 0 prepares each batch in the calling
    /// thread when it is asked for.
    pub num_workers: usize,
    /// Leave out the last batch of an epoch when it is smaller than `batch_size`.
    pub drop_last: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 32,
            seq_len: 64,
            shuffle: true,
            seed: 0,
            augment: None,
            num_workers: 0,
            drop_last: false,
        }
    }
}

/// Cuts a [`Source`] into batches, epoch after epoch (see the module doc).
#[derive(Debug, Clone)]
pub struct Loader {
    source: Source,
    config: LoaderConfig,
}

impl Loader {
    /// Checks the configuration against the source: at least one clip, batch_size and (for
    /// clips) seq_len at least 1, a valid augmentation, and at least one batch an epoch.
    pub fn new(source: Source, mut config: LoaderConfig) -> Result<Loader> {
        if source.indices.is_empty() {
            return Err(Error::data(
                "loader",
                "the source has no clips; give it at least one (check the split)",
            ));
        }
        if config.batch_size == 0 {
            return Err(Error::InvalidConfig {
                field: "batch_size",
                value: "0".into(),
                allowed: "at least 1",
            });
        }
        if config.drop_last && source.indices.len() < config.batch_size {
            return Err(Error::InvalidConfig {
                field: "batch_size",
                value: format!(
                    "{} (with drop_last, for {} clips)",
                    config.batch_size,
                    source.indices.len()
                ),
                allowed: "at most the number of clips when drop_last is set, or every batch is \
                          dropped",
            });
        }
        match *source.dataset {
            Dataset::Clips(_) => {
                if config.seq_len == 0 {
                    return Err(Error::InvalidConfig {
                        field: "seq_len",
                        value: "0".into(),
                        allowed: "at least 1",
                    });
                }
                if let Some(augment) = &config.augment {
                    augment.validate()?;
                }
            }
            Dataset::Features(_) => {
                if config.augment.take().is_some() {
                    tracing::warn!(
                        "augmentation is off for a feature pack: its features are ready model \
                         input and are taken as they are"
                    );
                }
            }
        }
        Ok(Loader { source, config })
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches in every epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.source.indices.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Frames per clip in every batch: `seq_len` for clips, the pack's `t` for features.
    pub fn seq_len(&self) -> usize {
        match &*self.source.dataset {
            Dataset::Clips(_) => self.config.seq_len,
            Dataset::Features(p) => p.t,
        }
    }

    /// Features per frame in every batch: [`NUM_FEATURES`] for clips, the pack's own for
    /// features.
    pub fn num_features(&self) -> usize {
        match &*self.source.dataset {
            Dataset::Clips(_) => NUM_FEATURES,
            Dataset::Features(p) => p.num_features,
        }
    }

    /// The clips of `epoch` in the order they are batched: the source's order, or (with
    /// `shuffle`) a permutation that depends only on the seed and the epoch.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order = self.source.indices.clone();
        if self.config.shuffle {
            let seed = derive_seed(self.config.seed, &[SHUFFLE_STREAM, epoch as u64]);
            order.shuffle(&mut StdRng::seed_from_u64(seed));
        }
        order
    }

    /// The batches of `epoch`, each with its clips' pack indices, in order; `num_workers`
    /// threads prepare them ahead (at most two batches per thread). The first error (a clip
    /// with non-finite frames, say, named by its pack index) ends the epoch. Dropping the
    /// iterator early stops the threads and waits for them (at most the batch each is
    /// preparing).
    pub fn epoch(&self, epoch: usize) -> Epoch {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first` on (the same batches [`Loader::epoch`] gives
    /// there), preparing none of the earlier ones: for resuming mid-epoch.
    pub fn epoch_from(&self, epoch: usize, first: usize) -> Epoch {
        let num_batches = self.num_batches();
        let first = first.min(num_batches);
        let job = Arc::new(Job {
            dataset: Arc::clone(&self.source.dataset),
            order: self.order(epoch),
            batch_size: self.config.batch_size,
            seq_len: self.config.seq_len,
            augment: self.config.augment.clone(),
            seed: self.config.seed,
            epoch,
        });
        let mut it = Epoch {
            job,
            first,
            next: first,
            num_batches,
            workers: Vec::new(),
            failed: None,
        };
        let threads = self.config.num_workers.min(num_batches - first);
        for w in 0..threads {
            let job = Arc::clone(&it.job);
            // Capacity 1: a worker holds one finished batch while it prepares the next.
            let (tx, rx) = sync_channel(1);
            let spawned = thread::Builder::new()
                .name(format!("signflow-loader-{w}"))
                .spawn(move || {
                    for k in (first + w..num_batches).step_by(threads) {
                        let item = job.batch(k);
                        let failed = item.is_err();
                        // A failed send means the epoch was dropped: nobody wants the rest.
                        if tx.send(item).is_err() || failed {
                            return;
                        }
                    }
                });
            match spawned {
                Ok(thread) => it.workers.push(Worker {
                    batches: rx,
                    thread,
                }),
                Err(e) => {
                    it.failed = Some(Error::io(format!("loader thread {w}"), e));
                    it.shutdown();
                    break;
                }
            }
        }
        it
    }
}

/// Separates the shuffle's random stream from the augmentation's.
const SHUFFLE_STREAM: u64 = 1;
const AUGMENT_STREAM: u64 = 2;

/// A seed for one random stream, mixed from the run's seed and the stream's coordinates with
/// SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number generators", 2014), so
/// that nearby coordinates give unrelated seeds.
fn derive_seed(seed: u64, coordinates: &[u64]) -> u64 {
    coordinates
        .iter()
        .fold(splitmix64(seed), |h, &c| splitmix64(h ^ c))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What an epoch's threads share: everything needed to prepare batch `k` on its own.
struct Job {
    dataset: Arc<Dataset>,
    order: Vec<usize>,
    batch_size: usize,
    seq_len: usize,
    augment: Option<AugmentConfig>,
    seed: u64,
    epoch: usize,
}

impl Job {
    fn batch(&self, k: usize) -> Result<(Batch, Vec<usize>)> {
        let start = k * self.batch_size;
        let end = (start + self.batch_size).min(self.order.len());
        let ids = self.order[start..end].to_vec();
        let batch = match &*self.dataset {
            Dataset::Clips(pack) => self.clip_batch(pack, &ids)?,
            Dataset::Features(pack) => feature_batch(pack, &ids)?,
        };
        batch.validate(&ids)?;
        Ok((batch, ids))
    }

    fn clip_batch(&self, pack: &ClipPack, ids: &[usize]) -> Result<Batch> {
        let per_clip = self.seq_len * NUM_FEATURES;
        let mut features = Vec::with_capacity(ids.len() * per_clip);
        let mut labels = Vec::with_capacity(ids.len());
        for &i in ids {
            labels.push(label(i, pack.labels[i], pack.classes.len())?);
            features.extend(self.clip_features(pack, i)?);
        }
        Ok(Batch {
            features,
            mask: vec![1.0; ids.len() * self.seq_len],
            labels,
            batch: ids.len(),
            seq: self.seq_len,
            num_features: NUM_FEATURES,
        })
    }

    /// Clip `i`'s frames, checked, augmented when asked, preprocessed.
    fn clip_features(&self, pack: &ClipPack, i: usize) -> Result<Vec<f32>> {
        let class = pack.classes.get(pack.labels[i]).map_or("?", String::as_str);
        let name = format!("clip {i} (class `{class}`)");
        let n = pack.lengths[i];
        if n == 0 || n > pack.t_max {
            return Err(Error::data(
                name,
                format!(
                    "has length {n}, but a clip needs 1 to {} frames (the pack's t_max); \
                     rebuild the pack",
                    pack.t_max
                ),
            ));
        }
        let frames = pack.clip(i);
        // Checked before augmenting rather than left to preprocessing: a frozen span could
        // overwrite the bad value and a stretch could skip it, so whether a bad clip failed
        // would depend on the epoch, and the frame named would be an augmented one.
        if let Some(j) = frames.iter().position(|v| !v.is_finite()) {
            return Err(Error::data(
                name,
                format!(
                    "value {} of frame {} is {}: input frames must be finite; fix the clip or \
                     leave it out of the split",
                    j % FRAME_WIDTH,
                    j / FRAME_WIDTH,
                    frames[j]
                ),
            ));
        }
        let augmented;
        let frames = match &self.augment {
            Some(cfg) => {
                let seed = derive_seed(self.seed, &[AUGMENT_STREAM, self.epoch as u64, i as u64]);
                augmented = augment_clip(frames, n, cfg, &mut StdRng::seed_from_u64(seed)).0;
                &augmented[..]
            }
            None => frames,
        };
        preprocess(frames, FRAME_WIDTH, self.seq_len)
            .map_err(|e| Error::data(name, format!("preprocessing failed: {e}")))
    }
}

fn feature_batch(pack: &FeaturePack, ids: &[usize]) -> Result<Batch> {
    let (t, f) = (pack.t, pack.num_features);
    let mut features = Vec::with_capacity(ids.len() * t * f);
    let mut mask = Vec::with_capacity(ids.len() * t);
    let mut labels = Vec::with_capacity(ids.len());
    for &i in ids {
        labels.push(label(i, pack.labels[i], pack.classes.len())?);
        let frames = pack.features[i * t * f..(i + 1) * t * f].chunks_exact(f);
        for (frame, &real) in frames.zip(&pack.mask[i * t..(i + 1) * t]) {
            // Batch promises zeros on padding frames, whatever the pack stored there.
            if real {
                features.extend_from_slice(frame);
            } else {
                features.resize(features.len() + f, 0.0);
            }
            mask.push(if real { 1.0 } else { 0.0 });
        }
    }
    Ok(Batch {
        features,
        mask,
        labels,
        batch: ids.len(),
        seq: t,
        num_features: f,
    })
}

fn label(clip: usize, label: usize, classes: usize) -> Result<usize> {
    if label < classes {
        Ok(label)
    } else {
        Err(Error::data(
            format!("clip {clip}"),
            format!(
                "has label {label}, but the pack names only {classes} classes; rebuild the pack"
            ),
        ))
    }
}

/// The batches of one epoch, in order (see [`Loader::epoch`]). Ends after the last batch or
/// after the first error.
pub struct Epoch {
    job: Arc<Job>,
    /// The first batch this iterator yields (worker `w` prepares `first + w`, `first + w + W`,
    /// …).
    first: usize,
    next: usize,
    num_batches: usize,
    /// Worker `w` prepares batches `w, w + W, w + 2W, …` and sends them in that order on its
    /// own channel, so reading the channels round-robin gives the batches in order with no
    /// reordering buffer. Empty when batches are prepared in the calling thread.
    workers: Vec<Worker>,
    /// An error to yield next, after which the epoch ends.
    failed: Option<Error>,
}

/// One thread preparing batches, and the channel it sends them on.
struct Worker {
    batches: Receiver<Result<(Batch, Vec<usize>)>>,
    thread: JoinHandle<()>,
}

impl Epoch {
    /// Stops the workers: with their receivers gone, each one's next send fails and it returns.
    fn shutdown(&mut self) {
        let (receivers, threads): (Vec<_>, Vec<_>) = self
            .workers
            .drain(..)
            .map(|w| (w.batches, w.thread))
            .unzip();
        drop(receivers);
        for thread in threads {
            // A worker that panicked has already printed its message, and none of its batches
            // is wanted any more.
            let _ = thread.join();
        }
    }
}

impl Iterator for Epoch {
    type Item = Result<(Batch, Vec<usize>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            self.next = self.num_batches;
            return Some(Err(e));
        }
        if self.next >= self.num_batches {
            return None;
        }
        let k = self.next;
        self.next += 1;
        let item = if self.workers.is_empty() {
            self.job.batch(k)
        } else {
            let w = (k - self.first) % self.workers.len();
            match self.workers[w].batches.recv() {
                Ok(item) => item,
                // The worker ended without sending batch k: it panicked.
                Err(_) => {
                    let worker = self.workers.swap_remove(w);
                    self.shutdown();
                    match worker.thread.join() {
                        Err(panic) => std::panic::resume_unwind(panic),
                        Ok(()) => Err(Error::data(
                            "loader",
                            format!("worker thread {w} stopped before preparing batch {k}"),
                        )),
                    }
                }
            }
        };
        if item.is_err() {
            self.next = self.num_batches;
            self.shutdown();
        }
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.failed.is_some() {
            return (1, Some(1));
        }
        // An error ends the epoch early, so only one more item is certain.
        let left = self.num_batches - self.next;
        (left.min(1), Some(left))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.shutdown();
    }
}
