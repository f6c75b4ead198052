//! A batch of model input on the host: what the loader threads produce and the model uploads.

use crate::error::{Error, Result};

/// `batch` clips of `seq` frames of `num_features` features each, padded: `features`
/// `[batch, seq, num_features]` (zero on padding frames), `mask` `[batch, seq]` (1.0 = real
/// frame, 0.0 = padding), `labels` `[batch]` (class indices).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub features: Vec<f32>,
    pub mask: Vec<f32>,
    pub labels: Vec<usize>,
    pub batch: usize,
    pub seq: usize,
    pub num_features: usize,
}

impl Batch {
    /// Checks that the buffers fit the sizes, that every clip has a real frame and that every
    /// value is finite, naming the first offending clip (`ids[i]` names clip `i`, for example
    /// its index in the pack).
    pub fn validate(&self, ids: &[usize]) -> Result<()> {
        let name = |i: usize| ids.get(i).copied().unwrap_or(i);
        if self.features.len() != self.batch * self.seq * self.num_features
            || self.mask.len() != self.batch * self.seq
            || self.labels.len() != self.batch
        {
            return Err(Error::shape(
                "batch",
                format!(
                    "{} clips of {} frames × {} features need {} feature values, {} mask values \
                     and {} labels; got {}, {} and {}",
                    self.batch,
                    self.seq,
                    self.num_features,
                    self.batch * self.seq * self.num_features,
                    self.batch * self.seq,
                    self.batch,
                    self.features.len(),
                    self.mask.len(),
                    self.labels.len()
                ),
            ));
        }
        for i in 0..self.batch {
            let mask = &self.mask[i * self.seq..(i + 1) * self.seq];
            if !mask.iter().any(|&m| m != 0.0) {
                return Err(Error::data(
                    format!("clip {}", name(i)),
                    "has no real frame (its mask is all padding); every clip needs at least one",
                ));
            }
            let per_clip = self.seq * self.num_features;
            let feats = &self.features[i * per_clip..(i + 1) * per_clip];
            if let Some(j) = feats.iter().position(|v| !v.is_finite()) {
                return Err(Error::data(
                    format!("clip {}", name(i)),
                    format!(
                        "feature {} of frame {} is {}: inputs must be finite",
                        j % self.num_features,
                        j / self.num_features,
                        feats[j]
                    ),
                ));
            }
        }
        Ok(())
    }
}
