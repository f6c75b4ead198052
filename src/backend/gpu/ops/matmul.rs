//! Matrix products (matmul.wgsl): register-tiled, generated per tile, layout, loader and
//! epilogue; and the second pass of a product split over K (matmul_splits.wgsl).

use crate::backend::gpu::kernel_config::MatmulTile;
use crate::backend::gpu::shaders::{
    gelu_source, repeat_marked_lines, wgsl_params, workgroup_constant, Entry, EntryPoint,
    KernelFamily, CHECKED_WORKGROUP,
};

const SOURCE: &str = include_str!("../../../../shaders/matmul.wgsl");
const LOAD_SCALAR: &str = include_str!("../../../../shaders/matmul_load_scalar.wgsl");
const LOAD_VEC4: &str = include_str!("../../../../shaders/matmul_load_vec4.wgsl");
const STORE: &str = include_str!("../../../../shaders/matmul_store.wgsl");
const STORE_GELU: &str = include_str!("../../../../shaders/matmul_store_gelu.wgsl");
const SPLITS: &str = include_str!("../../../../shaders/matmul_splits.wgsl");

wgsl_params! {
    pub struct MatmulParams {
        m: u32,
        n: u32,
        k: u32,
        has_bias: u32,
        a_offset: u32,
        b_offset: u32,
        c_offset: u32,
        bias_offset: u32,
        stride_a: u32,
        stride_b: u32,
        stride_c: u32,
        batch_base: u32,
        /// Where the GELU epilogue writes the pre-activation (element c_offset of C maps to it).
        pre_offset: u32,
        /// The K extent of each slice of a split product; 0 when not split.
        k_split: u32,
        _pad: [u32; 2],
    }
}

wgsl_params! {
    pub struct MatmulSplitsParams {
        m: u32,
        n: u32,
        slices: u32,
        has_bias: u32,
        c_offset: u32,
        bias_offset: u32,
        groups_x: u32,
        _pad: u32,
    }
}

/// matmul.wgsl for a tile and layout, with vec4 or scalar loads, and with or without the bias +
/// GELU epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulKernel {
    pub tile: MatmulTile,
    pub trans_a: bool,
    pub trans_b: bool,
    pub vec4: bool,
    pub gelu: bool,
}

/// A, B, the bias (a placeholder without one) and C.
pub const MATMUL: Entry<MatmulKernel, 4> = Entry::new("matmul", [1, 2, 3, 4]);
/// With the GELU epilogue: also the pre-activation.
pub const MATMUL_GELU: Entry<MatmulKernel, 5> = Entry::new("matmul", [1, 2, 3, 4, 5]);
const PLAIN_ENTRIES: &[EntryPoint] = &[MATMUL.point()];
const GELU_ENTRIES: &[EntryPoint] = &[MATMUL_GELU.point()];

impl KernelFamily for MatmulKernel {
    type Params = MatmulParams;

    fn name(&self) -> String {
        format!(
            "matmul_{}_{}{}_{}{}",
            self.tile.name(),
            if self.trans_a { 't' } else { 'n' },
            if self.trans_b { 't' } else { 'n' },
            if self.vec4 { "vec4" } else { "scalar" },
            if self.gelu { "_gelu" } else { "" }
        )
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    fn body(&self) -> String {
        let MatmulKernel {
            tile: MatmulTile { bm, bn, bk, tm, tn },
            trans_a,
            trans_b,
            vec4,
            gelu,
        } = *self;
        let consts = format!(
            "const BM: u32 = {bm}u;\nconst BN: u32 = {bn}u;\nconst BK: u32 = {bk}u;\n\
             const TM: u32 = {tm}u;\nconst TN: u32 = {tn}u;\n\
             const TRANS_A: bool = {trans_a};\nconst TRANS_B: bool = {trans_b};"
        );
        let loader = if vec4 { LOAD_VEC4 } else { LOAD_SCALAR };
        let body = SOURCE
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
                body.replace("//!EPILOGUE", STORE_GELU)
            )
        } else {
            body.replace("//!EPILOGUE", STORE)
        }
    }

    fn entries(&self) -> &'static [EntryPoint] {
        if self.gelu {
            GELU_ENTRIES
        } else {
            PLAIN_ENTRIES
        }
    }

    fn all() -> Vec<Self> {
        let mut all = Vec::new();
        for tile in MatmulTile::CANDIDATES {
            for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
                for vec4 in [false, true] {
                    for gelu in [false, true] {
                        all.push(MatmulKernel {
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
        all
    }
}

/// matmul_splits.wgsl: the slices' partial products added in order, and the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulSplitsKernel {
    pub workgroup: u32,
}

/// The partial products, the bias (a placeholder without one) and C.
pub const SUM_SLICES: Entry<MatmulSplitsKernel, 3> = Entry::new("sum_slices", [1, 2, 3]);
const SPLITS_ENTRIES: &[EntryPoint] = &[SUM_SLICES.point()];

impl KernelFamily for MatmulSplitsKernel {
    type Params = MatmulSplitsParams;

    fn name(&self) -> String {
        format!("matmul_splits_wg{}", self.workgroup)
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        workgroup_constant(self.workgroup)
    }

    fn body(&self) -> String {
        SPLITS.into()
    }

    fn entries(&self) -> &'static [EntryPoint] {
        SPLITS_ENTRIES
    }

    fn all() -> Vec<Self> {
        vec![MatmulSplitsKernel {
            workgroup: CHECKED_WORKGROUP,
        }]
    }
}
