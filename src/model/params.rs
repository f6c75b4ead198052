//! The model's parameters: their names and shapes (the reference's state_dict keys), their
//! place in one arena per kind (weights, gradients, optimizer moments), and their initial
//! values.

use rand::{Rng, SeedableRng};

use super::config::ModelConfig;
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::{HostTensor, Tensor};

/// Every view starts on a multiple of this many elements (256 bytes), so that each parameter
/// is aligned for vector loads on every device.
const ALIGN: usize = 64;

/// How a parameter starts, as PyTorch initialises the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// U(−1/√fan_in, 1/√fan_in): `nn.Linear`'s weight and bias.
    Linear {
        fan_in: usize,
    },
    /// Xavier uniform over a [rows, cols] matrix: attention's packed in-projection.
    Xavier,
    /// N(0, 0.02²): the learned positions.
    Normal002,
    Zeros,
    Ones,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamEntry {
    /// The reference's state_dict key.
    pub name: String,
    pub shape: Vec<usize>,
    /// Offset into the arena, in elements.
    pub offset: usize,
    pub init: Init,
}

impl ParamEntry {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Names, shapes and arena offsets of all parameters, in the reference's state_dict order.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLayout {
    pub entries: Vec<ParamEntry>,
    /// Arena length in elements (parameters plus alignment padding).
    pub total: usize,
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> ParamLayout {
        let (d, f, c, ff) = (cfg.d_model, cfg.num_features, cfg.num_classes, cfg.ff_dim);
        let mut list: Vec<(String, Vec<usize>, Init)> = vec![
            (
                "pos_embedding".into(),
                vec![cfg.max_seq_len, d],
                Init::Normal002,
            ),
            (
                "input_proj.weight".into(),
                vec![d, f],
                Init::Linear { fan_in: f },
            ),
            (
                "input_proj.bias".into(),
                vec![d],
                Init::Linear { fan_in: f },
            ),
        ];
        for l in 0..cfg.num_layers {
            let p = format!("encoder.layers.{l}.");
            list.extend([
                (
                    format!("{p}self_attn.in_proj_weight"),
                    vec![3 * d, d],
                    Init::Xavier,
                ),
                (
                    format!("{p}self_attn.in_proj_bias"),
                    vec![3 * d],
                    Init::Zeros,
                ),
                (
                    format!("{p}self_attn.out_proj.weight"),
                    vec![d, d],
                    Init::Linear { fan_in: d },
                ),
                (format!("{p}self_attn.out_proj.bias"), vec![d], Init::Zeros),
                (
                    format!("{p}linear1.weight"),
                    vec![ff, d],
                    Init::Linear { fan_in: d },
                ),
                (
                    format!("{p}linear1.bias"),
                    vec![ff],
                    Init::Linear { fan_in: d },
                ),
                (
                    format!("{p}linear2.weight"),
                    vec![d, ff],
                    Init::Linear { fan_in: ff },
                ),
                (
                    format!("{p}linear2.bias"),
                    vec![d],
                    Init::Linear { fan_in: ff },
                ),
                (format!("{p}norm1.weight"), vec![d], Init::Ones),
                (format!("{p}norm1.bias"), vec![d], Init::Zeros),
                (format!("{p}norm2.weight"), vec![d], Init::Ones),
                (format!("{p}norm2.bias"), vec![d], Init::Zeros),
            ]);
        }
        list.extend([
            ("encoder.norm.weight".into(), vec![d], Init::Ones),
            ("encoder.norm.bias".into(), vec![d], Init::Zeros),
            (
                "classifier.weight".into(),
                vec![c, d],
                Init::Linear { fan_in: d },
            ),
            (
                "classifier.bias".into(),
                vec![c],
                Init::Linear { fan_in: d },
            ),
        ]);
        let mut total = 0;
        let entries = list
            .into_iter()
            .map(|(name, shape, init)| {
                let offset = total;
                total += shape.iter().product::<usize>().next_multiple_of(ALIGN);
                ParamEntry {
                    name,
                    shape,
                    offset,
                    init,
                }
            })
            .collect();
        ParamLayout { entries, total }
    }

    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Number of parameters (padding not counted).
    pub fn count(&self) -> usize {
        self.entries.iter().map(ParamEntry::len).sum()
    }

    /// The arena's host contents with every parameter initialised from `seed` (padding zero).
    pub fn initial_values(&self, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut arena = vec![0.0f32; self.total];
        for e in &self.entries {
            let dst = &mut arena[e.offset..e.offset + e.len()];
            match e.init {
                Init::Linear { fan_in } => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    dst.iter_mut()
                        .for_each(|v| *v = rng.random_range(-bound..bound));
                }
                Init::Xavier => {
                    let bound = (6.0 / (e.shape[0] + e.shape[1]) as f32).sqrt();
                    dst.iter_mut()
                        .for_each(|v| *v = rng.random_range(-bound..bound));
                }
                Init::Normal002 => dst.iter_mut().for_each(|v| *v = 0.02 * normal(&mut rng)),
                Init::Zeros => dst.fill(0.0),
                Init::Ones => dst.fill(1.0),
            }
        }
        arena
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// One arena on a device and a view per parameter.
pub struct Arena<B: Backend> {
    /// The whole arena, padding included (zero), for ops over all parameters at once.
    pub all: Tensor<B>,
    pub views: Vec<Tensor<B>>,
}

impl<B: Backend> Arena<B> {
    /// An arena holding `values` (the layout's total length).
    pub fn upload(backend: &B, layout: &ParamLayout, values: Vec<f32>) -> Result<Arena<B>> {
        let all = backend.upload(&HostTensor::from_f32(&[layout.total], values)?)?;
        Arena::over(layout, all)
    }

    /// An arena in `dtype` whose contents are unspecified until written (a half-precision copy
    /// of the weights, cast into).
    pub fn alloc(backend: &B, layout: &ParamLayout, dtype: DType) -> Result<Arena<B>> {
        Arena::over(layout, backend.alloc(&[layout.total], dtype)?)
    }

    fn over(layout: &ParamLayout, all: Tensor<B>) -> Result<Arena<B>> {
        let views = layout
            .entries
            .iter()
            .map(|e| all.view(e.offset, &e.shape))
            .collect::<Result<_>>()?;
        Ok(Arena { all, views })
    }

    pub fn zeros(backend: &B, layout: &ParamLayout) -> Result<Arena<B>> {
        Arena::upload(backend, layout, vec![0.0; layout.total])
    }

    /// The arena's contents on the host.
    pub fn to_host(&self) -> Result<Vec<f32>> {
        self.all.to_f32_vec()
    }

    /// Total bytes of the arena.
    pub fn bytes(&self) -> u64 {
        (self.all.len() * self.all.dtype().size_bytes()) as u64
    }
}
