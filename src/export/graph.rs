//! The SignTransformer as an ONNX graph of standard operators, one function per layer kind,
//! computing what `model::transformer` computes in evaluation (no dropout): pre-norm encoder
//! layers, exact (erf) GELU, a key-padding mask that gives padded keys a large negative score,
//! the final norm, the mean over real frames and the classifier.
//!
//! Parameters are referred to by their checkpoint names (the graph's initializers); every
//! other value is named after the layer that makes it. The batch axis is dynamic; the frame
//! axis is the checkpoint's `seq_len`.

use super::onnx_proto::{
    attribute_type, AttributeProto, Dimension, DimensionValue, GraphProto, NodeProto, TensorProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto, BOOL, FLOAT, INT64,
};
use crate::model::ModelConfig;

/// The graph's inputs and output.
pub const FEATURES: &str = "features";
pub const MASK: &str = "mask";
pub const LOGITS: &str = "logits";
/// The name of the dynamic batch axis.
const BATCH: &str = "batch";

/// The score a padded key gets before the softmax: its weight underflows to exactly 0, and a
/// clip with one real frame still has one finite score per row.
const MASKED_SCORE: f32 = -1e9;

/// The graph (without initializers) of a model of `cfg` over clips of `seq_len` frames.
pub fn build(cfg: &ModelConfig, seq_len: usize) -> GraphProto {
    let mut g = Graph::default();
    // [b, t] -> [b, 1, 1, t]: one row of keys for every head and query.
    let key_axes = g.ints("key_mask.axes", &[1, 2]);
    let key_mask = g.op("Unsqueeze", "key_mask", &[MASK, &key_axes], vec![]);
    let mut h = embedding(&mut g, seq_len);
    for l in 0..cfg.num_layers {
        h = encoder_layer(&mut g, cfg, l, &h, &key_mask);
    }
    let hf = layer_norm(&mut g, &h, "encoder.norm", cfg.layer_norm_eps, "final_norm");
    let pooled = masked_mean_pool(&mut g, &hf);
    linear(
        &mut g,
        &pooled,
        "classifier.weight",
        "classifier.bias",
        LOGITS,
    );
    let batch = || DimensionValue::DimParam(BATCH.into());
    let fixed = |n: usize| DimensionValue::DimValue(n as i64);
    GraphProto {
        node: g.nodes,
        name: "signflow".into(),
        initializer: Vec::new(),
        input: vec![
            value_info(
                FEATURES,
                FLOAT,
                vec![batch(), fixed(seq_len), fixed(cfg.num_features)],
            ),
            value_info(MASK, BOOL, vec![batch(), fixed(seq_len)]),
        ],
        output: vec![value_info(
            LOGITS,
            FLOAT,
            vec![batch(), fixed(cfg.num_classes)],
        )],
    }
}

/// `input_proj(features) + pos_embedding[:seq_len]`.
fn embedding(g: &mut Graph, seq_len: usize) -> String {
    let projected = linear(
        g,
        FEATURES,
        "input_proj.weight",
        "input_proj.bias",
        "input_proj",
    );
    let zero = g.ints("pos.start", &[0]);
    let end = g.ints("pos.end", &[seq_len as i64]);
    let axes = g.ints("pos.axes", &[0]);
    let pos = g.op(
        "Slice",
        "pos",
        &["pos_embedding", &zero, &end, &axes],
        vec![],
    );
    g.op("Add", "embedding", &[&projected, &pos], vec![])
}

/// `h + attention(norm1(h))`, then `h + linear2(gelu(linear1(norm2(h))))`.
fn encoder_layer(g: &mut Graph, cfg: &ModelConfig, l: usize, h: &str, key_mask: &str) -> String {
    let p = format!("encoder.layers.{l}");
    let at = format!("layer{l}");
    let a1 = layer_norm(
        g,
        h,
        &format!("{p}.norm1"),
        cfg.layer_norm_eps,
        &format!("{at}.norm1"),
    );
    let attn = self_attention(g, cfg, &p, &at, &a1, key_mask);
    let hmid = g.op("Add", &format!("{at}.residual1"), &[h, &attn], vec![]);
    let a2 = layer_norm(
        g,
        &hmid,
        &format!("{p}.norm2"),
        cfg.layer_norm_eps,
        &format!("{at}.norm2"),
    );
    let f = linear(
        g,
        &a2,
        &format!("{p}.linear1.weight"),
        &format!("{p}.linear1.bias"),
        &format!("{at}.linear1"),
    );
    let f = gelu(g, &f, &format!("{at}.gelu"));
    let out = linear(
        g,
        &f,
        &format!("{p}.linear2.weight"),
        &format!("{p}.linear2.bias"),
        &format!("{at}.linear2"),
    );
    g.op("Add", &format!("{at}.residual2"), &[&hmid, &out], vec![])
}

/// Multi-head self-attention over `x` `[batch, t, d]` with the packed in-projection (q | k | v,
/// each head's columns side by side), padded keys masked, then the out-projection.
fn self_attention(
    g: &mut Graph,
    cfg: &ModelConfig,
    p: &str,
    at: &str,
    x: &str,
    key_mask: &str,
) -> String {
    let (heads, head_dim) = (cfg.num_heads as i64, cfg.head_dim() as i64);
    let qkv = linear(
        g,
        x,
        &format!("{p}.self_attn.in_proj_weight"),
        &format!("{p}.self_attn.in_proj_bias"),
        &format!("{at}.qkv"),
    );
    // [b, t, 3d] -> [b, t, 3, heads, head_dim] -> [3, b, heads, t, head_dim]
    let split_shape = g.ints(
        &format!("{at}.qkv.heads_shape"),
        &[0, 0, 3, heads, head_dim],
    );
    let qkv = g.op(
        "Reshape",
        &format!("{at}.qkv.heads"),
        &[&qkv, &split_shape],
        vec![],
    );
    let qkv = g.op(
        "Transpose",
        &format!("{at}.qkv.parts"),
        &[&qkv],
        vec![ints_attr("perm", &[2, 0, 3, 1, 4])],
    );
    let mut part = |i: i64, name: &str| {
        let index = g.scalar_int(&format!("{at}.{name}.index"), i);
        g.op(
            "Gather",
            &format!("{at}.{name}"),
            &[&qkv, &index],
            vec![int_attr("axis", 0)],
        )
    };
    let (q, k, v) = (part(0, "q"), part(1, "k"), part(2, "v"));
    let kt = g.op(
        "Transpose",
        &format!("{at}.k_t"),
        &[&k],
        vec![ints_attr("perm", &[0, 1, 3, 2])],
    );
    let scores = g.op("MatMul", &format!("{at}.scores"), &[&q, &kt], vec![]);
    let scale = g.scalar_float(&format!("{at}.scale"), 1.0 / (cfg.head_dim() as f32).sqrt());
    let scores = g.op(
        "Mul",
        &format!("{at}.scores_scaled"),
        &[&scores, &scale],
        vec![],
    );
    let masked_score = g.scalar_float(&format!("{at}.masked_score"), MASKED_SCORE);
    let scores = g.op(
        "Where",
        &format!("{at}.scores_masked"),
        &[key_mask, &scores, &masked_score],
        vec![],
    );
    let probs = g.op(
        "Softmax",
        &format!("{at}.probs"),
        &[&scores],
        vec![int_attr("axis", -1)],
    );
    let ctx = g.op("MatMul", &format!("{at}.context"), &[&probs, &v], vec![]);
    // [b, heads, t, head_dim] -> [b, t, heads, head_dim] -> [b, t, d]
    let ctx = g.op(
        "Transpose",
        &format!("{at}.context.frames"),
        &[&ctx],
        vec![ints_attr("perm", &[0, 2, 1, 3])],
    );
    let merged_shape = g.ints(&format!("{at}.context.shape"), &[0, 0, cfg.d_model as i64]);
    let ctx = g.op(
        "Reshape",
        &format!("{at}.context.merged"),
        &[&ctx, &merged_shape],
        vec![],
    );
    linear(
        g,
        &ctx,
        &format!("{p}.self_attn.out_proj.weight"),
        &format!("{p}.self_attn.out_proj.bias"),
        &format!("{at}.out_proj"),
    )
}

/// `x·weightᵀ + bias`, as `nn.Linear` (weights `[out, in]`).
fn linear(g: &mut Graph, x: &str, weight: &str, bias: &str, name: &str) -> String {
    let wt = g.op(
        "Transpose",
        &format!("{name}.weight_t"),
        &[weight],
        vec![ints_attr("perm", &[1, 0])],
    );
    let y = g.op("MatMul", &format!("{name}.matmul"), &[x, &wt], vec![]);
    g.op("Add", name, &[&y, bias], vec![])
}

/// Layer normalisation over the last axis with the affine parameters `{prefix}.weight` and
/// `{prefix}.bias`.
fn layer_norm(g: &mut Graph, x: &str, prefix: &str, eps: f32, name: &str) -> String {
    g.op(
        "LayerNormalization",
        name,
        &[x, &format!("{prefix}.weight"), &format!("{prefix}.bias")],
        vec![int_attr("axis", -1), float_attr("epsilon", eps)],
    )
}

/// Exact GELU, `0.5·x·(1 + erf(x/√2))`.
fn gelu(g: &mut Graph, x: &str, name: &str) -> String {
    let inv_sqrt2 = g.scalar_float(
        &format!("{name}.inv_sqrt2"),
        std::f32::consts::FRAC_1_SQRT_2,
    );
    let one = g.scalar_float(&format!("{name}.one"), 1.0);
    let half = g.scalar_float(&format!("{name}.half"), 0.5);
    let scaled = g.op("Mul", &format!("{name}.scaled"), &[x, &inv_sqrt2], vec![]);
    let erf = g.op("Erf", &format!("{name}.erf"), &[&scaled], vec![]);
    let cdf = g.op(
        "Add",
        &format!("{name}.one_plus_erf"),
        &[&erf, &one],
        vec![],
    );
    let cdf = g.op("Mul", &format!("{name}.cdf"), &[&cdf, &half], vec![]);
    g.op("Mul", name, &[x, &cdf], vec![])
}

/// The mean of `h` `[batch, t, d]` over each clip's real frames: `[batch, d]`. Padded frames
/// are selected out rather than multiplied by 0, so whatever they hold never reaches the sum.
fn masked_mean_pool(g: &mut Graph, h: &str) -> String {
    let axes = g.ints("pool.frame_axis", &[1]);
    let feature_axis = g.ints("pool.feature_axis", &[2]);
    let frame_mask = g.op(
        "Unsqueeze",
        "pool.frame_mask",
        &[MASK, &feature_axis],
        vec![],
    );
    let zero = g.scalar_float("pool.zero", 0.0);
    let real = g.op("Where", "pool.real", &[&frame_mask, h, &zero], vec![]);
    let sum = g.op(
        "ReduceSum",
        "pool.sum",
        &[&real, &axes],
        vec![int_attr("keepdims", 0)],
    );
    let counts = g.op(
        "Cast",
        "pool.mask_float",
        &[MASK],
        vec![int_attr("to", FLOAT as i64)],
    );
    let count = g.op(
        "ReduceSum",
        "pool.count",
        &[&counts, &axes],
        vec![int_attr("keepdims", 1)],
    );
    g.op("Div", "pooled", &[&sum, &count], vec![])
}

/// Nodes in the order they are added (a topological order, as ONNX requires).
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
}

impl Graph {
    /// Adds one node whose single output is named `name`, and returns that name.
    fn op(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.to_string()],
            name: name.to_string(),
            op_type: op_type.to_string(),
            domain: String::new(),
            attribute,
        });
        name.to_string()
    }

    fn constant(&mut self, name: &str, value: TensorProto) -> String {
        let attr = AttributeProto {
            name: "value".into(),
            r#type: attribute_type::TENSOR,
            t: Some(value),
            ..Default::default()
        };
        self.op("Constant", name, &[], vec![attr])
    }

    /// A 1-D int64 constant (shapes, axes, slice bounds).
    fn ints(&mut self, name: &str, values: &[i64]) -> String {
        self.constant(
            name,
            TensorProto {
                dims: vec![values.len() as i64],
                data_type: INT64,
                int64_data: values.to_vec(),
                ..Default::default()
            },
        )
    }

    fn scalar_int(&mut self, name: &str, value: i64) -> String {
        self.constant(
            name,
            TensorProto {
                data_type: INT64,
                int64_data: vec![value],
                ..Default::default()
            },
        )
    }

    fn scalar_float(&mut self, name: &str, value: f32) -> String {
        self.constant(
            name,
            TensorProto {
                data_type: FLOAT,
                float_data: vec![value],
                ..Default::default()
            },
        )
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i,
        ..Default::default()
    }
}

fn ints_attr(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn float_attr(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f,
        ..Default::default()
    }
}

fn value_info(name: &str, elem_type: i32, dims: Vec<DimensionValue>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|v| Dimension { value: Some(v) })
                        .collect(),
                }),
            }),
        }),
    }
}
