//! `SignTransformer`: the reference's pre-norm encoder (`shared/reference/sign_transformer.py`),
//! forward keeping what backward needs, and backward written by hand from the op set, layer
//! by layer. Generic over the backend; it never sees wgpu.

use std::collections::HashMap;

use super::config::ModelConfig;
use super::params::{Arena, ParamLayout};
use super::workspace::Workspace;
use crate::backend::{AttentionSpec, Backend, DropoutKey, MatmulSpec};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A parameter (or its gradient) on the host: name, shape, values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// A `nn.Linear`: `weight` `[out, in]`, `bias` `[out]`.
struct Linear<B: Backend> {
    w: Tensor<B>,
    b: Tensor<B>,
}

/// A `nn.LayerNorm`'s affine parameters.
struct Norm<B: Backend> {
    w: Tensor<B>,
    b: Tensor<B>,
}

struct Layer<B: Backend> {
    norm1: Norm<B>,
    in_proj: Linear<B>,
    out_proj: Linear<B>,
    norm2: Norm<B>,
    linear1: Linear<B>,
    linear2: Linear<B>,
}

/// Typed views into one arena (weights or gradients), by the reference's names.
struct Views<B: Backend> {
    pos: Tensor<B>,
    input_proj: Linear<B>,
    layers: Vec<Layer<B>>,
    final_norm: Norm<B>,
    classifier: Linear<B>,
}

impl<B: Backend> Views<B> {
    fn new(cfg: &ModelConfig, layout: &ParamLayout, arena: &Arena<B>) -> Views<B> {
        let get = |name: &str| {
            let i = layout
                .entries
                .iter()
                .position(|e| e.name == name)
                .expect("the layout names every parameter the model uses");
            arena.views[i].clone()
        };
        let linear = |p: &str| Linear {
            w: get(&format!("{p}.weight")),
            b: get(&format!("{p}.bias")),
        };
        let norm = |p: &str| Norm {
            w: get(&format!("{p}.weight")),
            b: get(&format!("{p}.bias")),
        };
        Views {
            pos: get("pos_embedding"),
            input_proj: linear("input_proj"),
            layers: (0..cfg.num_layers)
                .map(|l| {
                    let p = format!("encoder.layers.{l}");
                    Layer {
                        norm1: norm(&format!("{p}.norm1")),
                        in_proj: Linear {
                            w: get(&format!("{p}.self_attn.in_proj_weight")),
                            b: get(&format!("{p}.self_attn.in_proj_bias")),
                        },
                        out_proj: linear(&format!("{p}.self_attn.out_proj")),
                        norm2: norm(&format!("{p}.norm2")),
                        linear1: linear(&format!("{p}.linear1")),
                        linear2: linear(&format!("{p}.linear2")),
                    }
                })
                .collect(),
            final_norm: norm("encoder.norm"),
            classifier: linear("classifier"),
        }
    }

    fn linear(&self, id: LinearId) -> &Linear<B> {
        match id {
            LinearId::InputProj => &self.input_proj,
            LinearId::InProj(l) => &self.layers[l].in_proj,
            LinearId::OutProj(l) => &self.layers[l].out_proj,
            LinearId::Linear1(l) => &self.layers[l].linear1,
            LinearId::Linear2(l) => &self.layers[l].linear2,
            LinearId::Classifier => &self.classifier,
        }
    }
}

/// The model's linear layers, by which [`SignTransformer::pack_weights`]' packs are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LinearId {
    InputProj,
    InProj(usize),
    OutProj(usize),
    Linear1(usize),
    Linear2(usize),
    Classifier,
}

impl LinearId {
    /// Every linear layer of a model of `layers` layers.
    fn all(layers: usize) -> impl Iterator<Item = LinearId> {
        let per_layer = (0..layers).flat_map(|l| {
            [
                LinearId::InProj(l),
                LinearId::OutProj(l),
                LinearId::Linear1(l),
                LinearId::Linear2(l),
            ]
        });
        std::iter::once(LinearId::InputProj)
            .chain(per_layer)
            .chain(std::iter::once(LinearId::Classifier))
    }
}

/// Where dropout draws: the run's seed and the update step. Each dropout site of the model
/// has its own stream, so that backward regenerates exactly forward's masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutStep {
    pub seed: u64,
    pub step: u64,
}

/// The dropout sites: the embedding's, then four per layer in PyTorch's encoder-layer order.
#[derive(Debug, Clone, Copy)]
enum Site {
    Embedding,
    AttentionProbs(usize),
    AttentionOut(usize),
    FeedForwardHidden(usize),
    FeedForwardOut(usize),
}

impl Site {
    fn id(self) -> u32 {
        let layer = |l: usize, k: usize| (1 + 4 * l + k) as u32;
        match self {
            Site::Embedding => 0,
            Site::AttentionProbs(l) => layer(l, 0),
            Site::AttentionOut(l) => layer(l, 1),
            Site::FeedForwardHidden(l) => layer(l, 2),
            Site::FeedForwardOut(l) => layer(l, 3),
        }
    }
}

/// The weights rounded to a half-precision storage dtype S, which the products read when the
/// model runs in S; biases, positions and layer norms read the f32 master weights (DESIGN.md,
/// Precision).
struct HalfWeights<B: Backend> {
    arena: Arena<B>,
    views: Views<B>,
}

/// The sign-recognition transformer: parameters and their gradients, each in one arena.
pub struct SignTransformer<B: Backend> {
    config: ModelConfig,
    layout: ParamLayout,
    weights: Arena<B>,
    grads: Arena<B>,
    w: Views<B>,
    g: Views<B>,
    /// Each linear layer's weight packed for the backend's products
    /// ([`SignTransformer::pack_weights`]).
    packed: Option<HashMap<LinearId, Tensor<B>>>,
    /// Present when the forward pass runs in f16 or bf16 ([`SignTransformer::set_precision`]).
    half: Option<HalfWeights<B>>,
}

/// `y[m, out] = x[m, in] · Wᵀ + b`.
fn linear_spec(m: usize, inputs: usize, outputs: usize) -> MatmulSpec {
    MatmulSpec::new(m, outputs, inputs).transpose(false, true)
}

impl<B: Backend> SignTransformer<B> {
    /// A model with fresh parameters drawn from `seed` (PyTorch's initialisation scheme).
    pub fn new(backend: &B, config: ModelConfig, seed: u64) -> Result<SignTransformer<B>> {
        config.validate()?;
        let layout = ParamLayout::new(&config);
        let values = layout.initial_values(seed);
        SignTransformer::from_arena(backend, config, layout, values)
    }

    /// A model whose arena holds `values` (laid out as [`ParamLayout::new`] says).
    pub(crate) fn from_arena(
        backend: &B,
        config: ModelConfig,
        layout: ParamLayout,
        values: Vec<f32>,
    ) -> Result<SignTransformer<B>> {
        config.validate()?;
        let weights = Arena::upload(backend, &layout, values)?;
        let grads = Arena::zeros(backend, &layout)?;
        let w = Views::new(&config, &layout, &weights);
        let g = Views::new(&config, &layout, &grads);
        Ok(SignTransformer {
            config,
            layout,
            weights,
            grads,
            w,
            g,
            packed: None,
            half: None,
        })
    }

    /// Packs each linear layer's weight in the layout the backend's products read fastest
    /// ([`Backend::pack_weight`]: on the CPU, panels that no product has to pack again; the GPU
    /// keeps its weights as they are). For a model whose weights no longer change, as in
    /// inference: the packs are taken now, and [`SignTransformer::backward`] refuses a model
    /// that holds them. Costs the linear weights' memory once more (in f32 on the CPU).
    pub fn pack_weights(&mut self, backend: &B) -> Result<()> {
        let mut packed = HashMap::new();
        for id in LinearId::all(self.config.num_layers) {
            match backend.pack_weight(&self.product_weights().linear(id).w)? {
                Some(p) => packed.insert(id, p),
                None => return Ok(()),
            };
        }
        self.packed = Some(packed);
        Ok(())
    }

    /// Runs the forward pass in storage dtype `dtype` (f32, f16 or bf16): activations in
    /// `dtype` (plan workspaces with [`Workspace::new_in`]), the products reading the weights
    /// rounded to `dtype` once here, layer norms' parameters, statistics and the logits f32.
    /// Packed weights are packed again from the weights in `dtype`.
    pub fn set_precision(&mut self, backend: &B, dtype: DType) -> Result<()> {
        self.half = None;
        if dtype != DType::F32 {
            let arena = Arena::alloc(backend, &self.layout, dtype)?;
            let views = Views::new(&self.config, &self.layout, &arena);
            self.half = Some(HalfWeights { arena, views });
            self.refresh_half_weights(backend)?;
        }
        // Dropped before they are redone, so that both copies are never held at once.
        if self.packed.take().is_some() {
            self.pack_weights(backend)?;
        }
        Ok(())
    }

    /// Rounds the f32 master weights into the half-precision copies the products read: after
    /// [`SignTransformer::set_precision`] and after every update of the weights. Nothing to do
    /// in f32.
    pub fn refresh_half_weights(&self, backend: &B) -> Result<()> {
        match &self.half {
            Some(h) => backend.cast(&self.weights.all, &h.arena.all),
            None => Ok(()),
        }
    }

    /// The storage dtype of the forward pass's activations.
    pub fn precision(&self) -> DType {
        self.half
            .as_ref()
            .map_or(DType::F32, |h| h.arena.all.dtype())
    }

    /// The weights the products read: the half-precision copies when there are some.
    fn product_weights(&self) -> &Views<B> {
        self.half.as_ref().map_or(&self.w, |h| &h.views)
    }

    /// Linear layer `id`'s weight as the right-hand side of `x[m, in]·Wᵀ`, and the product's
    /// spec: the packed weight where there is one, else W read transposed.
    fn linear_rhs(&self, id: LinearId, m: usize) -> (&Tensor<B>, MatmulSpec) {
        let w = &self.product_weights().linear(id).w;
        let spec = linear_spec(m, w.shape()[1], w.shape()[0]);
        match &self.packed {
            Some(packed) => (&packed[&id], spec.transpose(false, false).packed()),
            None => (w, spec),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// All parameters in one tensor (padding included), for whole-model optimizer steps.
    pub fn weights(&self) -> &Arena<B> {
        &self.weights
    }

    /// The gradients of the last [`SignTransformer::backward`], laid out as the weights.
    pub fn grads(&self) -> &Arena<B> {
        &self.grads
    }

    /// Every parameter on the host, by name, in the reference's order.
    pub fn named_parameters(&self) -> Result<Vec<NamedTensor>> {
        named(&self.layout, &self.weights)
    }

    /// Every gradient on the host, by parameter name.
    pub fn named_grads(&self) -> Result<Vec<NamedTensor>> {
        named(&self.layout, &self.grads)
    }

    /// The logits of the batch loaded into `ws` (see [`Workspace::logits`]), with dropout
    /// drawn from `dropout` when training, none when it is `None` (evaluation).
    pub fn forward(
        &self,
        backend: &B,
        ws: &Workspace<B>,
        dropout: Option<DropoutStep>,
    ) -> Result<()> {
        backend.run_ops(|| self.forward_ops(backend, ws, dropout))
    }

    fn forward_ops(
        &self,
        backend: &B,
        ws: &Workspace<B>,
        dropout: Option<DropoutStep>,
    ) -> Result<()> {
        if ws.dtype != self.precision() {
            return Err(Error::shape(
                "forward",
                format!(
                    "the workspace holds {} activations, the model runs in {}; plan it with \
                     Workspace::new_in and the model's precision",
                    ws.dtype,
                    self.precision()
                ),
            ));
        }
        let cfg = &self.config;
        let (batch, seq, d) = (ws.batch, ws.seq, cfg.d_model);
        let bt = batch * seq;
        let p = if dropout.is_some() { cfg.dropout } else { 0.0 };
        let key = |site: Site| dropout_key(dropout, site);

        // Embedding: input projection, learned positions, dropout; into the residual stream
        // (f32), whose rounded copies (hin, hmid) the layer norms read.
        let h0 = ws.stream_at(&ws.hin[0]);
        let x = ws.x.reshape(&[bt, cfg.num_features])?;
        let (w, spec) = self.linear_rhs(LinearId::InputProj, bt);
        backend.matmul(&x, w, Some(&self.w.input_proj.b), h0, &spec)?;
        let pos = self.w.pos.view(0, &[seq * d])?;
        for b in 0..batch {
            let item = h0.view(b * seq * d, &[seq * d])?;
            backend.add(&item, &pos, &item)?;
        }
        self.dropout(backend, h0, p, key(Site::Embedding))?;
        ws.save_stream(backend, &ws.hin[0])?;

        for (l, (layer, acts)) in self.w.layers.iter().zip(&ws.layers).enumerate() {
            let hin = &ws.hin[l];
            // Attention block: h + dropout(out_proj(attention(norm1(h)))).
            backend.layernorm(
                hin,
                &layer.norm1.w,
                &layer.norm1.b,
                cfg.layer_norm_eps,
                &acts.a1,
                &acts.mean1,
                &acts.rstd1,
            )?;
            let (w, spec) = self.linear_rhs(LinearId::InProj(l), bt);
            backend.matmul(&acts.a1, w, Some(&layer.in_proj.b), &acts.qkv, &spec)?;
            let spec = self.attention_spec(ws, p, key(Site::AttentionProbs(l)));
            backend.attention(&acts.qkv, &ws.mask, &spec, &acts.attn, &acts.lse)?;
            let (w, spec) = self.linear_rhs(LinearId::OutProj(l), bt);
            backend.matmul(&acts.attn, w, Some(&layer.out_proj.b), &ws.o, &spec)?;
            self.dropout(backend, &ws.o, p, key(Site::AttentionOut(l)))?;
            backend.add(ws.stream_at(hin), &ws.o, ws.stream_at(&acts.hmid))?;
            ws.save_stream(backend, &acts.hmid)?;

            // Feed-forward block: h + dropout(linear2(dropout(gelu(linear1(norm2(h)))))).
            backend.layernorm(
                &acts.hmid,
                &layer.norm2.w,
                &layer.norm2.b,
                cfg.layer_norm_eps,
                &acts.a2,
                &acts.mean2,
                &acts.rstd2,
            )?;
            let (w, spec) = self.linear_rhs(LinearId::Linear1(l), bt);
            backend.matmul_bias_gelu(&acts.a2, w, &layer.linear1.b, &spec, &acts.fpre, &acts.f)?;
            self.dropout(backend, &acts.f, p, key(Site::FeedForwardHidden(l)))?;
            let (w, spec) = self.linear_rhs(LinearId::Linear2(l), bt);
            backend.matmul(&acts.f, w, Some(&layer.linear2.b), &ws.o, &spec)?;
            self.dropout(backend, &ws.o, p, key(Site::FeedForwardOut(l)))?;
            let hout = &ws.hin[l + 1];
            backend.add(ws.stream_at(&acts.hmid), &ws.o, ws.stream_at(hout))?;
            ws.save_stream(backend, hout)?;
        }

        // Final norm, masked mean over real frames, classifier.
        backend.layernorm(
            &ws.hin[cfg.num_layers],
            &self.w.final_norm.w,
            &self.w.final_norm.b,
            cfg.layer_norm_eps,
            &ws.hf,
            &ws.meanf,
            &ws.rstdf,
        )?;
        backend.mean_pool(&ws.hf.reshape(&[batch, seq, d])?, &ws.mask, &ws.pooled)?;
        let (w, spec) = self.linear_rhs(LinearId::Classifier, batch);
        backend.matmul(&ws.pooled, w, Some(&self.w.classifier.b), &ws.logits, &spec)
    }

    /// Records the mean cross-entropy of the last forward's logits against the loaded labels
    /// (read it with [`Workspace::loss_and_hits`]).
    pub fn loss(&self, backend: &B, ws: &Workspace<B>, label_smoothing: f32) -> Result<()> {
        backend.cross_entropy(
            &ws.logits,
            &ws.labels,
            None,
            label_smoothing,
            &ws.loss,
            &ws.hits,
            &ws.ce_lse,
        )
    }

    /// Gradients of `scale ·` the loss of [`SignTransformer::loss`] with respect to every
    /// parameter, into [`SignTransformer::grads`] (overwritten, f32). `dropout` must be the
    /// forward pass's. In half precision the activations' gradients are stored in the
    /// activations' dtype, but for the residual stream's (f32, as the stream), and the products
    /// read the half weight copies, as the forward pass does; `scale` is then the loss scale
    /// that keeps those gradients within f16's range.
    pub fn backward(
        &self,
        backend: &B,
        ws: &Workspace<B>,
        label_smoothing: f32,
        scale: f32,
        dropout: Option<DropoutStep>,
    ) -> Result<()> {
        backend.run_ops(|| self.backward_ops(backend, ws, label_smoothing, scale, dropout))
    }

    fn backward_ops(
        &self,
        backend: &B,
        ws: &Workspace<B>,
        label_smoothing: f32,
        scale: f32,
        dropout: Option<DropoutStep>,
    ) -> Result<()> {
        let gr = ws.grads.as_ref().ok_or_else(|| {
            Error::shape(
                "backward",
                "this workspace was planned for inference; plan it with training = true",
            )
        })?;
        if ws.dtype != self.precision() {
            return Err(Error::shape(
                "backward",
                format!(
                    "the workspace holds {} activations, the model runs in {}",
                    ws.dtype,
                    self.precision()
                ),
            ));
        }
        if self.packed.is_some() {
            // Training would change the weights under their packed copies.
            return Err(Error::shape(
                "backward",
                "this model holds weights packed for inference (pack_weights); train a model \
                 loaded without them",
            ));
        }
        let cfg = &self.config;
        let (batch, seq, d, ff) = (ws.batch, ws.seq, cfg.d_model, cfg.ff_dim);
        let bt = batch * seq;
        let p = if dropout.is_some() { cfg.dropout } else { 0.0 };
        let key = |site: Site| dropout_key(dropout, site);
        // dW[out, in] = dyᵀ · x over the rows.
        let weight_grad = |dy: &Tensor<B>, x: &Tensor<B>, dw: &Tensor<B>, rows, outs, ins| {
            backend.matmul(
                dy,
                x,
                None,
                dw,
                &MatmulSpec::new(outs, ins, rows).transpose(true, false),
            )
        };
        // dx[rows, in] = dy · W.
        let input_grad = |dy: &Tensor<B>, w: &Tensor<B>, dx: &Tensor<B>, rows, outs, ins| {
            backend.matmul(dy, w, None, dx, &MatmulSpec::new(rows, ins, outs))
        };

        backend.cross_entropy_backward(
            &ws.logits,
            &ws.labels,
            None,
            label_smoothing,
            &ws.ce_lse,
            scale,
            &gr.dlogits,
        )?;
        let c = cfg.num_classes;
        let pw = self.product_weights();
        // The products read the loss's gradient in the activations' dtype.
        let dlogits = match &gr.dlogits_half {
            Some(half) => {
                backend.cast(&gr.dlogits, half)?;
                half
            }
            None => &gr.dlogits,
        };
        weight_grad(dlogits, &ws.pooled, &self.g.classifier.w, batch, c, d)?;
        backend.bias_grad(&gr.dlogits, &self.g.classifier.b)?;
        input_grad(dlogits, &pw.classifier.w, &gr.dpooled, batch, c, d)?;
        let dhf = &gr.dattn;
        backend.mean_pool_backward(&gr.dpooled, &ws.mask, &dhf.reshape(&[batch, seq, d])?)?;
        // In half precision, a residual gradient rounded to the activations' dtype, as the
        // products and the layer norms read and write it: in ws.hf, the final norm's output,
        // which backward does not read (the classifier's gradients read the pooled features).
        let dres_half = ws.stream.as_ref().map(|_| &ws.hf);
        // A layer norm's dx (into the f32 residual gradient), written in the activations'
        // dtype as its x is.
        let norm_backward =
            |x, norm: &Norm<B>, grad: &Norm<B>, (mean, rstd), dy, dx: &Tensor<B>| {
                let stored = dres_half.unwrap_or(dx);
                backend.layernorm_backward(x, &norm.w, mean, rstd, dy, stored, &grad.w, &grad.b)?;
                match dres_half {
                    Some(half) => backend.cast(half, dx),
                    None => Ok(()),
                }
            };
        // A residual gradient (f32) as the products read it: rounded to the activations'
        // dtype.
        let for_products = |g| -> Result<&Tensor<B>> {
            match dres_half {
                Some(half) => backend.cast(g, half).map(|()| half),
                None => Ok(g),
            }
        };
        norm_backward(
            &ws.hin[cfg.num_layers],
            &self.w.final_norm,
            &self.g.final_norm,
            (&ws.meanf, &ws.rstdf),
            dhf,
            &gr.dh,
        )?;

        // gr.dh holds d(loss)/d(the residual stream leaving layer l). ws.o holds a block's
        // output gradient, then its layer norm's dx.
        for l in (0..cfg.num_layers).rev() {
            let (layer, grad, acts) = (&self.w.layers[l], &self.g.layers[l], &ws.layers[l]);
            let products = &pw.layers[l];
            // Feed-forward block.
            self.dropout_into(backend, &gr.dh, p, key(Site::FeedForwardOut(l)), &ws.o)?;
            backend.bias_grad(&ws.o, &grad.linear2.b)?;
            let dg = for_products(&ws.o)?;
            weight_grad(dg, &acts.f, &grad.linear2.w, bt, d, ff)?;
            input_grad(dg, &products.linear2.w, &gr.dff, bt, d, ff)?;
            self.dropout(backend, &gr.dff, p, key(Site::FeedForwardHidden(l)))?;
            backend.gelu_backward(&acts.fpre, &gr.dff, &gr.dff2)?;
            weight_grad(&gr.dff2, &acts.a2, &grad.linear1.w, bt, ff, d)?;
            backend.bias_grad(&gr.dff2, &grad.linear1.b)?;
            input_grad(&gr.dff2, &products.linear1.w, &gr.dattn, bt, ff, d)?;
            norm_backward(
                &acts.hmid,
                &layer.norm2,
                &grad.norm2,
                (&acts.mean2, &acts.rstd2),
                &gr.dattn,
                &ws.o,
            )?;
            backend.add(&gr.dh, &ws.o, &gr.dhmid)?;

            // Attention block.
            self.dropout_into(backend, &gr.dhmid, p, key(Site::AttentionOut(l)), &ws.o)?;
            backend.bias_grad(&ws.o, &grad.out_proj.b)?;
            let dout = for_products(&ws.o)?;
            weight_grad(dout, &acts.attn, &grad.out_proj.w, bt, d, d)?;
            input_grad(dout, &products.out_proj.w, &gr.dattn, bt, d, d)?;
            let spec = self.attention_spec(ws, p, key(Site::AttentionProbs(l)));
            backend.attention_backward(
                &acts.qkv, &ws.mask, &spec, &acts.attn, &acts.lse, &gr.dattn, &gr.dqkv,
            )?;
            weight_grad(&gr.dqkv, &acts.a1, &grad.in_proj.w, bt, 3 * d, d)?;
            backend.bias_grad(&gr.dqkv, &grad.in_proj.b)?;
            input_grad(&gr.dqkv, &products.in_proj.w, &gr.dattn, bt, 3 * d, d)?;
            norm_backward(
                &ws.hin[l],
                &layer.norm1,
                &grad.norm1,
                (&acts.mean1, &acts.rstd1),
                &gr.dattn,
                &ws.o,
            )?;
            backend.add(&gr.dhmid, &ws.o, &gr.dh)?;
        }

        // Embedding: the positions' gradient sums over the batch; rows past seq get none.
        self.dropout(backend, &gr.dh, p, key(Site::Embedding))?;
        backend.bias_grad(&gr.dh, &self.g.pos.view(0, &[seq * d])?)?;
        if seq < cfg.max_seq_len {
            let rest = self.g.pos.view(seq * d, &[(cfg.max_seq_len - seq) * d])?;
            backend.scale(&rest, 0.0, &rest)?;
        }
        backend.bias_grad(&gr.dh, &self.g.input_proj.b)?;
        let x = ws.x.reshape(&[bt, cfg.num_features])?;
        weight_grad(
            for_products(&gr.dh)?,
            &x,
            &self.g.input_proj.w,
            bt,
            d,
            cfg.num_features,
        )
    }

    fn attention_spec(&self, ws: &Workspace<B>, p: f32, key: DropoutKey) -> AttentionSpec {
        AttentionSpec {
            dropout: p,
            key,
            ..AttentionSpec::new(
                ws.batch,
                ws.seq,
                self.config.num_heads,
                self.config.head_dim(),
            )
        }
    }

    /// Dropout in place; nothing to record when it is off.
    fn dropout(&self, backend: &B, x: &Tensor<B>, p: f32, key: DropoutKey) -> Result<()> {
        if p > 0.0 {
            backend.dropout(x, p, &key, x)?;
        }
        Ok(())
    }

    /// `out = dropout(x)`, a copy when dropout is off.
    fn dropout_into(
        &self,
        backend: &B,
        x: &Tensor<B>,
        p: f32,
        key: DropoutKey,
        out: &Tensor<B>,
    ) -> Result<()> {
        if p > 0.0 {
            backend.dropout(x, p, &key, out)
        } else {
            backend.copy(x, out)
        }
    }
}

fn dropout_key(dropout: Option<DropoutStep>, site: Site) -> DropoutKey {
    let DropoutStep { seed, step } = dropout.unwrap_or(DropoutStep { seed: 0, step: 0 });
    DropoutKey {
        seed,
        step,
        site: site.id(),
    }
}

fn named<B: Backend>(layout: &ParamLayout, arena: &Arena<B>) -> Result<Vec<NamedTensor>> {
    let all = arena.to_host()?;
    Ok(layout
        .entries
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                e.shape.clone(),
                all[e.offset..e.offset + e.len()].to_vec(),
            )
        })
        .collect())
}
