//! Model checkpoints: a safetensors file with exactly the reference's tensor names, and in its
//! metadata the configuration (the reference's field names), the class names (`classes`, a
//! JSON list), the preprocessing (`seq_len`, `layout`) and the crate's version
//! (`signflow_version`, ignored on load). A file saved by the reference's `save_safetensors`
//! loads unchanged, and ours loads into PyTorch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::config::ModelConfig;
use super::params::ParamLayout;
use super::transformer::SignTransformer;
use crate::backend::Backend;
use crate::data::packs::{CLIP_PACK_FORMAT, FEATURE_PACK_FORMAT, LAYOUT_258};
use crate::error::{Error, Result};
use crate::fsio::read::read_safetensors;
use crate::fsio::write_atomic;

/// What a model's input frames were before the model saw them.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    /// Frames per clip after resampling (the model's input length).
    pub seq_len: usize,
    /// `mediapipe-holistic-258` when the model was trained on raw clips preprocessed to the 469
    /// features; `features` when it was given ready features.
    pub layout: String,
}

/// The input layout of a model trained on ready features.
pub const FEATURES_LAYOUT: &str = "features";

/// The `format` metadata of a training state (`state.safetensors`), which holds a model's
/// weights beside its optimizer moments; a checkpoint has no `format`.
pub const TRAINING_STATE_FORMAT: &str = "signflow-state/1";

/// A model checkpoint on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub config: ModelConfig,
    pub classes: Vec<String>,
    pub preprocessing: Preprocessing,
    /// Parameters by name.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// What the file lacked and got a default for, to be said once by the caller.
    pub defaults_used: Vec<String>,
}

impl Checkpoint {
    /// The model's parameters with their class names and preprocessing.
    pub fn from_model<B: Backend>(
        model: &SignTransformer<B>,
        classes: Vec<String>,
        preprocessing: Preprocessing,
    ) -> Result<Checkpoint> {
        let tensors = model
            .named_parameters()?
            .into_iter()
            .map(|(name, shape, values)| (name, (shape, values)))
            .collect();
        Ok(Checkpoint {
            config: model.config().clone(),
            classes,
            preprocessing,
            tensors,
            defaults_used: Vec::new(),
        })
    }

    /// A freshly initialised model of `config` (the initialisation [`SignTransformer::new`]
    /// gives for `seed`), on the host: no device is needed to make, save or export one.
    pub fn initial(
        config: ModelConfig,
        classes: Vec<String>,
        preprocessing: Preprocessing,
        seed: u64,
    ) -> Result<Checkpoint> {
        config.validate()?;
        let layout = ParamLayout::new(&config);
        let values = layout.initial_values(seed);
        let tensors = layout
            .entries
            .iter()
            .map(|e| {
                let v = values[e.offset..e.offset + e.len()].to_vec();
                (e.name.clone(), (e.shape.clone(), v))
            })
            .collect();
        Ok(Checkpoint {
            config,
            classes,
            preprocessing,
            tensors,
            defaults_used: Vec::new(),
        })
    }

    /// Writes the checkpoint atomically (a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta: HashMap<String, String> = self.config.to_metadata().into_iter().collect();
        meta.insert(
            "classes".into(),
            serde_json::to_string(&self.classes).expect("strings serialise"),
        );
        meta.insert("seq_len".into(), self.preprocessing.seq_len.to_string());
        meta.insert("layout".into(), self.preprocessing.layout.clone());
        meta.insert(
            "signflow_version".into(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        let bytes = serialize_f32(
            self.tensors.iter().map(|(name, (shape, values))| {
                (name.as_str(), shape.as_slice(), values.as_slice())
            }),
            meta,
        )
        .map_err(|e| Error::checkpoint(path, e))?;
        write_atomic(path, &bytes)
    }

    /// Reads a checkpoint and checks every tensor against the configuration in its metadata:
    /// names missing, extra, mis-shaped or of a dtype that is not a float are all reported at
    /// once, and so are tensors holding a NaN or an infinity. Packs and training states are
    /// recognised by their `format` and refused as what they are.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = read_safetensors(path, "checkpoint")?;
        let err = |detail: String| Error::checkpoint(path, detail);
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            err(format!(
                "not a readable safetensors file ({e}); it may be torn or not a checkpoint"
            ))
        })?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| err(format!("not a readable safetensors file ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if let Some(format) = meta.get("format") {
            return Err(err(not_a_checkpoint(format)));
        }
        if !holds_parameters(&st) {
            return Err(err(format!(
                "none of its tensors ({}) is a SignTransformer parameter: not a model checkpoint",
                preview(st.names())
            )));
        }
        let (config, missing) =
            ModelConfig::from_metadata(&meta, &ModelConfig::default()).map_err(&err)?;
        let mut defaults_used: Vec<String> = Vec::new();
        let mut config = config;
        if !missing.is_empty() {
            // A file without a configuration: infer the sizes the tensors fix.
            infer_sizes(&st, &mut config);
            defaults_used.push(format!(
                "model configuration fields {} (inferred from the tensors or defaults)",
                missing.join(", ")
            ));
        }
        // Each layer has tensors of its own: a configuration with more layers than the file
        // has tensors cannot fit it, and is refused before its layout is built.
        if config.num_layers > st.len() {
            return Err(err(format!(
                "its configuration has num_layers = {}, but the file holds only {} tensors",
                config.num_layers,
                st.len()
            )));
        }
        config
            .validate()
            .map_err(|e| err(format!("its configuration is not valid: {e}")))?;

        let layout = ParamLayout::new(&config);
        let mut problems = Vec::new();
        let mut tensors = BTreeMap::new();
        for entry in &layout.entries {
            let Ok(view) = st.tensor(&entry.name) else {
                problems.push(format!("missing {} {:?}", entry.name, entry.shape));
                continue;
            };
            if view.shape() != entry.shape.as_slice() {
                problems.push(format!(
                    "{} has shape {:?}, the configuration needs {:?}",
                    entry.name,
                    view.shape(),
                    entry.shape
                ));
                continue;
            }
            match to_f32(view.dtype(), view.data()) {
                Some(values) => {
                    tensors.insert(entry.name.clone(), (entry.shape.clone(), values));
                }
                None => problems.push(format!(
                    "{} is {:?}; parameters must be f32 (or f64, f16, bf16)",
                    entry.name,
                    view.dtype()
                )),
            }
        }
        for name in st.names() {
            if layout.get(name).is_none() {
                problems.push(format!("unexpected tensor {name}"));
            }
        }
        if !problems.is_empty() {
            return Err(err(format!(
                "does not fit a SignTransformer of its configuration (d_model {}, {} layers, \
                 {} heads, ff_dim {}, {} classes, {} features, max_seq_len {}):\n  {}",
                config.d_model,
                config.num_layers,
                config.num_heads,
                config.ff_dim,
                config.num_classes,
                config.num_features,
                config.max_seq_len,
                problems.join("\n  ")
            )));
        }

        let classes = match meta.get("classes") {
            Some(text) => parse_classes("classes", text, config.num_classes).map_err(err)?,
            None => {
                defaults_used.push("class names (numbered 0..num_classes)".into());
                (0..config.num_classes).map(|i| i.to_string()).collect()
            }
        };
        let seq_len = match meta.get("seq_len") {
            Some(text) => text
                .parse()
                .ok()
                .filter(|&s| s >= 1 && s <= config.max_seq_len)
                .ok_or_else(|| {
                    err(format!(
                        "metadata seq_len = {text:?} is not a frame count from 1 to max_seq_len"
                    ))
                })?,
            None => {
                defaults_used.push("seq_len (max_seq_len)".into());
                config.max_seq_len
            }
        };
        check_weights_finite(&tensors).map_err(err)?;
        let layout = match meta.get("layout") {
            Some(l) => {
                check_layout("layout", l).map_err(err)?;
                l.clone()
            }
            None => {
                defaults_used.push("input layout (ready features)".into());
                FEATURES_LAYOUT.to_string()
            }
        };
        Ok(Checkpoint {
            config,
            classes,
            preprocessing: Preprocessing { seq_len, layout },
            tensors,
            defaults_used,
        })
    }

    /// The model on `backend`.
    pub fn to_model<B: Backend>(&self, backend: &B) -> Result<SignTransformer<B>> {
        let layout = ParamLayout::new(&self.config);
        let mut arena = vec![0.0f32; layout.total];
        for e in &layout.entries {
            let (_, values) = &self.tensors[&e.name];
            arena[e.offset..e.offset + e.len()].copy_from_slice(values);
        }
        SignTransformer::from_arena(backend, self.config.clone(), layout, arena)
    }
}

/// What a SignFlow file with a `format` is, said to someone who gave it as a checkpoint.
fn not_a_checkpoint(format: &str) -> String {
    let what = match format {
        CLIP_PACK_FORMAT => "a clip pack",
        FEATURE_PACK_FORMAT => "a feature pack",
        TRAINING_STATE_FORMAT => "a training state",
        other => {
            return format!(
                "its metadata has format `{}`, which model checkpoints do not have: not a model \
                 checkpoint",
                other.escape_debug()
            )
        }
    };
    format!("this is {what}, not a model checkpoint (its format is `{format}`)")
}

/// Whether any tensor of the file is named as a parameter of a model (a file without a
/// configuration is otherwise read as a model of zero layers).
fn holds_parameters(st: &SafeTensors) -> bool {
    let one_layer = ParamLayout::new(&ModelConfig {
        num_layers: 1,
        ..ModelConfig::default()
    });
    st.names().iter().any(|n| one_layer.get(n).is_some())
}

/// The first few of `names`, sorted, escaped for a message.
fn preview(mut names: Vec<&str>) -> String {
    if names.is_empty() {
        return "it has none".into();
    }
    names.sort();
    let mut shown: Vec<String> = names
        .iter()
        .take(6)
        .map(|n| n.escape_debug().to_string())
        .collect();
    if names.len() > 6 {
        shown.push(format!("and {} more", names.len() - 6));
    }
    shown.join(", ")
}

/// A line naming the tensor `name` when some of its `values` are NaN or infinite: how many,
/// and the first.
pub fn non_finite(name: &str, values: &[f32]) -> Option<String> {
    let first = values.iter().position(|v| !v.is_finite())?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    Some(format!(
        "{name}: {count} of {} values are not finite, the first ({}) at index {first}",
        values.len(),
        values[first]
    ))
}

/// The sizes a configuration-less file's tensors fix: features, model width, classes, ff
/// width, positions and layers (heads and dropout cannot be read off the tensors).
fn infer_sizes(st: &SafeTensors, cfg: &mut ModelConfig) {
    let shape = |name: &str| st.tensor(name).ok().map(|v| v.shape().to_vec());
    // Only well-formed matrices are read; anything else is reported by the name checks.
    let matrix = |name: &str| match shape(name).as_deref() {
        Some(&[rows, cols]) => Some((rows, cols)),
        _ => None,
    };
    if let Some((d, f)) = matrix("input_proj.weight") {
        (cfg.d_model, cfg.num_features) = (d, f);
    }
    if let Some((c, _)) = matrix("classifier.weight") {
        cfg.num_classes = c;
    }
    if let Some((t, _)) = matrix("pos_embedding") {
        cfg.max_seq_len = t;
    }
    if let Some((ff, _)) = matrix("encoder.layers.0.linear1.weight") {
        cfg.ff_dim = ff;
    }
    cfg.num_layers = (0..)
        .take_while(|l| shape(&format!("encoder.layers.{l}.norm1.weight")).is_some())
        .count();
}

/// Float tensor data as f32; None for other dtypes.
pub fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytemuck::pod_collect_to_vec(data),
        Dtype::F64 => bytemuck::pod_collect_to_vec::<u8, f64>(data)
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(data)
            .into_iter()
            .map(f32::from)
            .collect(),
        Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(data)
            .into_iter()
            .map(f32::from)
            .collect(),
        _ => return None,
    })
}

/// A safetensors file of f32 tensors.
pub fn serialize_f32<'a>(
    tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [f32])>,
    meta: HashMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let views = tensors
        .map(|(name, shape, values)| {
            safetensors::tensor::TensorView::new(
                Dtype::F32,
                shape.to_vec(),
                bytemuck::cast_slice(values),
            )
            .map(|v| (name, v))
            .map_err(|e| e.to_string())
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())
}

/// The class names in a model file's metadata `key` (a JSON list), one per output of the
/// model; the message says what is wrong otherwise.
pub(crate) fn parse_classes(
    key: &str,
    text: &str,
    outputs: usize,
) -> std::result::Result<Vec<String>, String> {
    let classes: Vec<String> = serde_json::from_str(text)
        .map_err(|e| format!("metadata `{key}` is not a JSON list of names: {e}"))?;
    if classes.len() != outputs {
        return Err(format!(
            "metadata lists {} classes, the model has {outputs} outputs",
            classes.len()
        ));
    }
    Ok(classes)
}

/// Refuses weights that are NaN or infinite, naming each tensor that holds some.
pub(crate) fn check_weights_finite(
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> std::result::Result<(), String> {
    let bad: Vec<String> = tensors
        .iter()
        .filter_map(|(name, (_, values))| non_finite(name, values))
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(format!(
        "holds weights that are not finite numbers, so its every output would be NaN (a corrupt \
         file, or a run that diverged):\n  {}",
        bad.join("\n  ")
    ))
}

/// Refuses an input layout (metadata `key`) this crate does not know.
pub(crate) fn check_layout(key: &str, layout: &str) -> std::result::Result<(), String> {
    if layout == LAYOUT_258 || layout == FEATURES_LAYOUT {
        return Ok(());
    }
    Err(format!(
        "metadata {key} = `{}` is not an input layout this crate knows: `{LAYOUT_258}` (raw \
         MediaPipe frames) or `{FEATURES_LAYOUT}` (ready features)",
        layout.escape_debug()
    ))
}
