//! `ModelConfig`: the size of a `SignTransformer`, with the reference's field names
//! (`shared/reference/sign_transformer.py`), which are also the checkpoint metadata keys.

use std::collections::HashMap;
use std::path::Path;

use super::params::ParamLayout;
use crate::backend::AttentionSpec;
use crate::data::{Dataset, NUM_FEATURES};
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub num_features: usize,
    pub num_classes: usize,
    pub d_model: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub ff_dim: usize,
    pub max_seq_len: usize,
    pub dropout: f32,
    pub layer_norm_eps: f32,
}

impl Default for ModelConfig {
    /// The reference's defaults, with the 469 features of the preprocessing.
    fn default() -> Self {
        ModelConfig {
            num_features: 469,
            num_classes: 100,
            d_model: 256,
            num_heads: 8,
            num_layers: 4,
            ff_dim: 1024,
            max_seq_len: 64,
            dropout: 0.1,
            layer_norm_eps: 1e-5,
        }
    }
}

/// Largest value of any one size: far above any sign model, small enough that products of
/// two sizes cannot overflow.
const MAX_SIZE: usize = 1 << 20;
/// Most encoder layers.
const MAX_LAYERS: usize = 1 << 10;
/// Largest parameter arena.
const MAX_PARAMETERS: usize = 1 << 31;

/// A float as Python's `str()` writes it (`0.1`, `0.0`, `1e-05`), so that our metadata reads
/// as the reference's.
fn python_float(v: f32) -> String {
    let sci = format!("{v:e}"); // shortest digits, e.g. "1e-5", "1.5e-7", "1e0"
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    if (-4..16).contains(&exp) {
        let plain = v.to_string();
        if plain.contains('.') || !v.is_finite() {
            plain
        } else {
            plain + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

fn invalid(field: &'static str, value: impl ToString, allowed: &'static str) -> Error {
    Error::InvalidConfig {
        field,
        value: value.to_string(),
        allowed,
    }
}

impl ModelConfig {
    /// Rejects sizes the model cannot be built with, saying which value to change.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("num_features", self.num_features),
            ("num_classes", self.num_classes),
            ("d_model", self.d_model),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("ff_dim", self.ff_dim),
            ("max_seq_len", self.max_seq_len),
        ];
        for (field, value) in positive {
            if value == 0 || value > MAX_SIZE {
                return Err(invalid(
                    field,
                    value,
                    "a positive integer of at most 1,048,576",
                ));
            }
        }
        // Checked before the layout below is built: it holds a dozen named tensors per layer.
        if self.num_layers > MAX_LAYERS {
            return Err(invalid(
                "num_layers",
                self.num_layers,
                "a positive integer of at most 1,024",
            ));
        }
        if ParamLayout::new(self).total > MAX_PARAMETERS {
            return Err(invalid(
                "d_model",
                self.d_model,
                "sizes whose parameters fit in 2^31 values (4 GiB of f32 per arena)",
            ));
        }
        if self.d_model % self.num_heads != 0 {
            return Err(invalid(
                "num_heads",
                self.num_heads,
                "a divisor of d_model (each head gets d_model / num_heads features)",
            ));
        }
        if self.head_dim() > AttentionSpec::MAX_HEAD_DIM {
            return Err(invalid(
                "num_heads",
                self.num_heads,
                "large enough that d_model / num_heads is at most 128",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid("dropout", self.dropout, "a probability in [0, 1)"));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(invalid(
                "layer_norm_eps",
                self.layer_norm_eps,
                "a small positive number such as 1e-5",
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.num_heads
    }

    /// The sizes that a model's parameters fix, by field name: what a checkpoint given to
    /// fine-tune decides, whatever a run asks for.
    pub fn sizes(&self) -> [(&'static str, usize); 5] {
        [
            ("d_model", self.d_model),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("ff_dim", self.ff_dim),
            ("max_seq_len", self.max_seq_len),
        ]
    }

    /// The `model` object of a config file (`source` names the file in errors); missing
    /// fields take their defaults, unknown ones are refused.
    pub fn from_json(source: &str, value: &serde_json::Value) -> Result<ModelConfig> {
        serde_json::from_value(value.clone()).map_err(|e| {
            Error::data(
                source,
                format!(
                    "its `model` object: {e}; it takes the fields of a model configuration \
                     (d_model, num_heads, num_layers, ff_dim, max_seq_len, dropout, ...)"
                ),
            )
        })
    }

    /// Refuses a clip length (`seq_len`) this model cannot take: from 1 to `max_seq_len`.
    pub fn check_seq_len(&self, seq_len: usize) -> Result<()> {
        if (1..=self.max_seq_len).contains(&seq_len) {
            return Ok(());
        }
        Err(Error::InvalidConfig {
            field: "seq_len",
            value: seq_len.to_string(),
            allowed: "1 to the model's max_seq_len",
        })
    }

    /// Refuses data the model cannot take, naming `path`: a feature pack of other features per
    /// frame or of more frames than max_seq_len (ready features are taken as they are, not
    /// resampled), or a clip pack for a model that does not take the preprocessed features.
    pub fn check_input(&self, path: impl AsRef<Path>, dataset: &Dataset) -> Result<()> {
        match dataset {
            Dataset::Features(p) => self.check_frames(path, "a feature pack", p.t, p.num_features),
            Dataset::Clips(_) => self.check_frames(
                path,
                "a clip pack, preprocessed,",
                self.max_seq_len,
                NUM_FEATURES,
            ),
        }
    }

    /// Refuses `what` (named by `path`) of `frames` frames of `features` values each where the
    /// model cannot take it.
    pub fn check_frames(
        &self,
        path: impl AsRef<Path>,
        what: &str,
        frames: usize,
        features: usize,
    ) -> Result<()> {
        if features != self.num_features {
            return Err(Error::data(
                path,
                format!(
                    "{what} has {features} features per frame, which does not fit a model that \
                     takes {}",
                    self.num_features
                ),
            ));
        }
        if frames > self.max_seq_len {
            return Err(Error::data(
                path,
                format!(
                    "{what} has {frames} frames per clip, which does not fit a model of \
                     max_seq_len {}: ready features are taken as they are, not resampled; give \
                     at most {} frames per clip, or a model of a longer max_seq_len",
                    self.max_seq_len, self.max_seq_len
                ),
            ));
        }
        Ok(())
    }

    /// The checkpoint metadata, as the reference's `save_safetensors` writes it: every field
    /// as Python's `str()` of its value.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        vec![
            ("num_features".into(), self.num_features.to_string()),
            ("num_classes".into(), self.num_classes.to_string()),
            ("d_model".into(), self.d_model.to_string()),
            ("num_heads".into(), self.num_heads.to_string()),
            ("num_layers".into(), self.num_layers.to_string()),
            ("ff_dim".into(), self.ff_dim.to_string()),
            ("max_seq_len".into(), self.max_seq_len.to_string()),
            ("dropout".into(), python_float(self.dropout)),
            ("layer_norm_eps".into(), python_float(self.layer_norm_eps)),
        ]
    }

    /// Reads the fields from checkpoint metadata; a field that is missing keeps `defaults`'
    /// value and is named in the returned list, so that the caller can say so once.
    pub fn from_metadata(
        meta: &HashMap<String, String>,
        defaults: &ModelConfig,
    ) -> std::result::Result<(ModelConfig, Vec<&'static str>), String> {
        let mut cfg = defaults.clone();
        let mut missing = Vec::new();
        macro_rules! field {
            ($name:ident) => {
                match meta.get(stringify!($name)) {
                    Some(text) => {
                        cfg.$name = text.trim().parse().map_err(|_| {
                            format!(
                                "metadata {} = `{}` is not a number",
                                stringify!($name),
                                text.escape_debug()
                            )
                        })?
                    }
                    None => missing.push(stringify!($name)),
                }
            };
        }
        field!(num_features);
        field!(num_classes);
        field!(d_model);
        field!(num_heads);
        field!(num_layers);
        field!(ff_dim);
        field!(max_seq_len);
        field!(dropout);
        field!(layer_norm_eps);
        Ok((cfg, missing))
    }
}
