//! WGSL sources and their generated variants. Per-thread register arrays need `const` sizes,
//! so the matrix product's tile sizes, transposes and loader are substituted into the source
//! before compiling; each variant is a [`Kernel`] value, under which its pipeline is cached.

use super::kernel_config::{AttentionVariant, MatmulTile};
use crate::backend::math;
use crate::dtype::DType;

const MATMUL: &str = include_str!("../../../shaders/matmul.wgsl");
const MATMUL_LOAD_SCALAR: &str = include_str!("../../../shaders/matmul_load_scalar.wgsl");
const MATMUL_LOAD_VEC4: &str = include_str!("../../../shaders/matmul_load_vec4.wgsl");
const MATMUL_STORE: &str = include_str!("../../../shaders/matmul_store.wgsl");
const MATMUL_STORE_GELU: &str = include_str!("../../../shaders/matmul_store_gelu.wgsl");
const MATMUL_SPLITS: &str = include_str!("../../../shaders/matmul_splits.wgsl");
const GELU: &str = include_str!("../../../shaders/gelu.wgsl");
const WORKGROUP_REDUCE: &str = include_str!("../../../shaders/workgroup_reduce.wgsl");
const ELEMENTWISE: &str = include_str!("../../../shaders/elementwise.wgsl");
const CAST: &str = include_str!("../../../shaders/cast.wgsl");
const LAYERNORM: &str = include_str!("../../../shaders/layernorm.wgsl");
const COLUMN_SUMS: &str = include_str!("../../../shaders/column_sums.wgsl");
const POOL: &str = include_str!("../../../shaders/pool.wgsl");
const CROSS_ENTROPY: &str = include_str!("../../../shaders/cross_entropy.wgsl");
const OPTIM: &str = include_str!("../../../shaders/optim.wgsl");
const PHILOX: &str = include_str!("../../../shaders/philox.wgsl");
const DROPOUT: &str = include_str!("../../../shaders/dropout.wgsl");
const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");

/// One compilable shader module: a WGSL file with its generated constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// matmul.wgsl for a tile and layout, with vec4 or scalar loads, and with or without the
    /// bias + GELU epilogue.
    Matmul {
        tile: MatmulTile,
        trans_a: bool,
        trans_b: bool,
        vec4: bool,
        gelu: bool,
    },
    /// matmul_splits.wgsl: `sum_slices`, the second pass of a product split over K.
    MatmulSplits { workgroup: u32 },
    /// elementwise.wgsl with `workgroup` invocations per workgroup: entry points `add`,
    /// `scale`, `gelu_fwd`, `gelu_bwd`.
    Elementwise { workgroup: u32 },
    /// layernorm.wgsl: `layernorm_fwd`, `layernorm_bwd` (a power-of-two workgroup).
    LayerNorm { workgroup: u32 },
    /// column_sums.wgsl: `bias_partials`, `layernorm_partials`, `finish_columns`.
    ColumnSums { workgroup: u32, row_block: u32 },
    /// pool.wgsl: `mean_pool_fwd`, `mean_pool_bwd`.
    Pool { workgroup: u32 },
    /// cross_entropy.wgsl: `xent_rows`, `xent_finish`, `xent_bwd` (a power-of-two workgroup).
    CrossEntropy { workgroup: u32 },
    /// optim.wgsl: `adamw`, `sumsq_partials`, `nonfinite_partials`, `finish_norm`,
    /// `finish_any`, `clip` (a power-of-two workgroup).
    Optim { workgroup: u32, items: u32 },
    /// philox.wgsl + dropout.wgsl: `dropout`.
    Dropout { workgroup: u32 },
    /// philox.wgsl + attention.wgsl for one variant (head size, queries per workgroup, key
    /// tile): `attention_fwd`, `attention_delta`, `attention_dq`, `attention_dkv`.
    Attention(AttentionVariant),
    /// cast.wgsl from one dtype to another: entry point `convert`.
    Cast {
        from: DType,
        to: DType,
        workgroup: u32,
    },
}

/// gelu.wgsl with the constants of `math`'s GELU in front, so that both backends use one fit.
/// Each code line (not a comment) that holds `$m` (m = `marker`), `count` times, with `$m`
/// replaced by 0, 1, ..., `$m4` by the value / 4 and `$mc` by x, y, z or w (the value % 4: a
/// vec4's component): straight-line code over an invocation's named registers. A private
/// array indexed by anything but a constant lives in local memory on NVIDIA's driver, and
/// WGSL has no way to ask for a loop to be unrolled.
fn repeat_marked_lines(src: &str, marker: char, count: u32) -> String {
    let (value, quarter, component) = (
        format!("${marker}"),
        format!("${marker}4"),
        format!("${marker}c"),
    );
    let mut out = String::with_capacity(src.len() * 2);
    for line in src.lines() {
        if line.contains(&value) && !line.trim_start().starts_with("//") {
            for v in 0..count {
                let line = line
                    .replace(&quarter, &(v / 4).to_string())
                    .replace(&component, ["x", "y", "z", "w"][v as usize % 4])
                    .replace(&value, &v.to_string());
                out.push_str(&line);
                out.push('\n');
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn gelu_source() -> String {
    fn array(name: &str, c: &[f32]) -> String {
        let items: Vec<String> = c.iter().map(|v| format!("{v:?}")).collect();
        format!(
            "const {name} = array<f32, {}>({});\n",
            c.len(),
            items.join(", ")
        )
    }
    fn scalar(name: &str, v: f32) -> String {
        format!("const {name}: f32 = {v:?};\n")
    }
    [
        array("CDF_ODD", &math::CDF_ODD),
        array("GELU_GRAD_ODD", &math::GELU_GRAD_ODD),
        array("MILLS_P", &math::MILLS_P),
        array("MILLS_Q", &math::MILLS_Q),
        scalar("GELU_INNER", math::GELU_INNER),
        scalar("MILLS_LO", math::MILLS_LO),
        scalar("MILLS_HI", math::MILLS_HI),
        scalar("FRAC_1_SQRT_2PI", math::FRAC_1_SQRT_2PI),
        scalar("LN2_HI", math::LN2_HI),
        scalar("LN2_LO", math::LN2_LO),
        GELU.to_string(),
    ]
    .concat()
}

/// Code of a dtype in cast.wgsl.
fn dtype_code(d: DType) -> u32 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Bf16 => 2,
    }
}

impl Kernel {
    /// A unique, readable name.
    pub fn name(&self) -> String {
        match *self {
            Kernel::Matmul {
                tile,
                trans_a,
                trans_b,
                vec4,
                gelu,
            } => format!(
                "matmul_{}_{}{}_{}{}",
                tile.name(),
                if trans_a { 't' } else { 'n' },
                if trans_b { 't' } else { 'n' },
                if vec4 { "vec4" } else { "scalar" },
                if gelu { "_gelu" } else { "" }
            ),
            Kernel::MatmulSplits { workgroup } => format!("matmul_splits_wg{workgroup}"),
            Kernel::Elementwise { workgroup } => format!("elementwise_wg{workgroup}"),
            Kernel::LayerNorm { workgroup } => format!("layernorm_wg{workgroup}"),
            Kernel::ColumnSums {
                workgroup,
                row_block,
            } => format!("column_sums_wg{workgroup}_rows{row_block}"),
            Kernel::Pool { workgroup } => format!("pool_wg{workgroup}"),
            Kernel::CrossEntropy { workgroup } => format!("cross_entropy_wg{workgroup}"),
            Kernel::Optim { workgroup, items } => format!("optim_wg{workgroup}_items{items}"),
            Kernel::Dropout { workgroup } => format!("dropout_wg{workgroup}"),
            Kernel::Attention(AttentionVariant { head_dim, bq, bk }) => {
                format!("attention_d{head_dim}_bq{bq}_bk{bk}")
            }
            Kernel::Cast {
                from,
                to,
                workgroup,
            } => format!("cast_{from}_{to}_wg{workgroup}"),
        }
    }

    /// Values of the source's `override` constants.
    pub fn constants(&self) -> Vec<(&'static str, f64)> {
        match *self {
            Kernel::Matmul { .. } => Vec::new(),
            Kernel::Elementwise { workgroup }
            | Kernel::MatmulSplits { workgroup }
            | Kernel::Cast { workgroup, .. }
            | Kernel::LayerNorm { workgroup }
            | Kernel::Pool { workgroup }
            | Kernel::CrossEntropy { workgroup }
            | Kernel::Dropout { workgroup } => vec![("WG", workgroup as f64)],
            Kernel::Attention(_) => Vec::new(),
            Kernel::Optim { workgroup, items } => {
                vec![("WG", workgroup as f64), ("ITEMS", items as f64)]
            }
            Kernel::ColumnSums {
                workgroup,
                row_block,
            } => vec![("WG", workgroup as f64), ("ROW_BLOCK", row_block as f64)],
        }
    }

    /// The WGSL source, constants substituted.
    pub fn source(&self) -> String {
        match *self {
            Kernel::Matmul {
                tile: MatmulTile { bm, bn, bk, tm, tn },
                trans_a,
                trans_b,
                vec4,
                gelu,
            } => {
                let consts = format!(
                    "const BM: u32 = {bm}u;\nconst BN: u32 = {bn}u;\nconst BK: u32 = {bk}u;\n\
                     const TM: u32 = {tm}u;\nconst TN: u32 = {tn}u;\n\
                     const TRANS_A: bool = {trans_a};\nconst TRANS_B: bool = {trans_b};"
                );
                let loader = if vec4 {
                    MATMUL_LOAD_VEC4
                } else {
                    MATMUL_LOAD_SCALAR
                };
                let body = MATMUL
                    .replace("//!CONSTS", &consts)
                    .replace("//!LOADER", loader);
                // A thread's share of a slice's loader slots (a vec4 or one element each).
                let slot_width = if vec4 { 4 } else { 1 };
                let threads = (bm / tm) * (bn / tn);
                let slots = |elements: u32| (elements / slot_width).div_ceil(threads);
                let body = repeat_marked_lines(&body, 'u', slots(bm * bk));
                let body = repeat_marked_lines(&body, 'w', slots(bk * bn));
                let body = repeat_marked_lines(&body, 'a', tm / 4);
                let body = repeat_marked_lines(&body, 'i', tm);
                let body = repeat_marked_lines(&body, 'j', tn / 4);
                if gelu {
                    format!(
                        "{}\n{}",
                        gelu_source(),
                        body.replace("//!EPILOGUE", MATMUL_STORE_GELU)
                    )
                } else {
                    body.replace("//!EPILOGUE", MATMUL_STORE)
                }
            }
            Kernel::MatmulSplits { .. } => MATMUL_SPLITS.into(),
            Kernel::Elementwise { .. } => format!("{}\n{ELEMENTWISE}", gelu_source()),
            Kernel::LayerNorm { .. } => format!("{WORKGROUP_REDUCE}\n{LAYERNORM}"),
            Kernel::ColumnSums { .. } => COLUMN_SUMS.into(),
            Kernel::Pool { .. } => POOL.into(),
            Kernel::CrossEntropy { .. } => format!("{WORKGROUP_REDUCE}\n{CROSS_ENTROPY}"),
            Kernel::Optim { .. } => format!("{WORKGROUP_REDUCE}\n{OPTIM}"),
            Kernel::Dropout { .. } => format!("{PHILOX}\n{DROPOUT}"),
            Kernel::Attention(AttentionVariant { head_dim, bq, bk }) => {
                use super::kernel_config::{ATTENTION_DQ_KEYS, ATTENTION_FORWARD_KEYS};
                let consts = format!(
                    "const HEAD_DIM: u32 = {head_dim}u;\nconst HD4: u32 = {}u;\n\
                     const BK: u32 = {bk}u;\nconst BQ: u32 = {bq}u;\n\
                     const FWD_KEYS: u32 = {ATTENTION_FORWARD_KEYS}u;\n\
                     const DQ_KEYS: u32 = {ATTENTION_DQ_KEYS}u;\nconst NO_KEYS: f32 = {:e};",
                    head_dim / 4,
                    crate::backend::NO_KEYS_LSE
                );
                let body = ATTENTION.replace("//!CONSTS", &consts);
                let body = repeat_marked_lines(&body, 'j', head_dim / 4);
                let body = repeat_marked_lines(&body, 'f', ATTENTION_FORWARD_KEYS);
                let body = repeat_marked_lines(&body, 'q', ATTENTION_DQ_KEYS);
                format!("{PHILOX}\n{body}")
            }
            Kernel::Cast { from, to, .. } => CAST.replace(
                "//!CONSTS",
                &format!(
                    "const SRC: u32 = {}u;\nconst DST: u32 = {}u;",
                    dtype_code(from),
                    dtype_code(to)
                ),
            ),
        }
    }

    /// Every variant the backend can compile (at a typical workgroup size), for validation
    /// without a GPU.
    pub fn all() -> Vec<Kernel> {
        const WORKGROUP: u32 = 256;
        let mut all = vec![
            Kernel::MatmulSplits {
                workgroup: WORKGROUP,
            },
            Kernel::Elementwise {
                workgroup: WORKGROUP,
            },
            Kernel::LayerNorm {
                workgroup: WORKGROUP,
            },
            Kernel::ColumnSums {
                workgroup: WORKGROUP,
                row_block: super::kernel_config::COLUMN_ROW_BLOCK,
            },
            Kernel::Pool {
                workgroup: WORKGROUP,
            },
            Kernel::CrossEntropy {
                workgroup: WORKGROUP,
            },
            Kernel::Optim {
                workgroup: WORKGROUP,
                items: super::kernel_config::REDUCE_ITEMS,
            },
            Kernel::Dropout {
                workgroup: WORKGROUP,
            },
        ];
        for head_dim in super::kernel_config::ATTENTION_HEAD_DIMS {
            for bq in super::kernel_config::ATTENTION_QUERY_BLOCKS {
                all.push(Kernel::Attention(AttentionVariant {
                    head_dim,
                    bq,
                    bk: 8,
                }));
            }
        }
        for tile in MatmulTile::CANDIDATES {
            for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
                for vec4 in [false, true] {
                    for gelu in [false, true] {
                        all.push(Kernel::Matmul {
                            tile,
                            trans_a,
                            trans_b,
                            vec4,
                            gelu,
                        });
                    }
                }
            }
        }
        for from in DType::ALL {
            for to in DType::ALL {
                all.push(Kernel::Cast {
                    from,
                    to,
                    workgroup: WORKGROUP,
                });
            }
        }
        all
    }
}
