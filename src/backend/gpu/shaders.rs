//! What a compilable kernel is: a family's variant (`KernelFamily`, one per module of `ops/`),
//! its uniform block generated from one Rust field list (`wgsl_params!`), the entry points its
//! launchers dispatch with the storage bindings each binds ([`Entry`]), and the [`Kernel`]
//! value its pipelines are cached under. Also the WGSL shared by several families and the
//! substitution step that generates straight-line register code.

use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;

use super::kernel_config::{AttentionVariant, ELEMENTWISE_WORKGROUP};
use super::operand::hoist_directives;
use super::ops::cast::CastKernel;
use super::ops::column_sums::ColumnSumsKernel;
use super::ops::cross_entropy::CrossEntropyKernel;
use super::ops::dropout::DropoutKernel;
use super::ops::elementwise::ElementwiseKernel;
use super::ops::layernorm::LayerNormKernel;
use super::ops::matmul::{MatmulKernel, MatmulSplitsKernel};
use super::ops::matmul_coop::MatmulCoopKernel;
use super::ops::optim::OptimKernel;
use super::ops::pool::PoolKernel;
use crate::backend::math;

const GELU: &str = include_str!("../../../shaders/gelu.wgsl");
const WORKGROUP_REDUCE: &str = include_str!("../../../shaders/workgroup_reduce.wgsl");
pub(crate) const PHILOX: &str = include_str!("../../../shaders/philox.wgsl");

/// A kernel's uniform block (binding 0, `p` in WGSL), declared with [`wgsl_params!`] so that
/// the WGSL `struct Params` is generated from the Rust struct's field list.
pub(crate) trait WgslParams: bytemuck::Pod {
    /// The WGSL declaration of `struct Params`, prepended to the kernel's source.
    const WGSL: &'static str;
}

/// Declares a `#[repr(C)]` uniform block and its WGSL `struct Params` from one field list.
/// Field types are `u32`, `f32` and `[u32; 2]` (WGSL `vec2<u32>`); field docs become WGSL
/// comments. Rust lays these fields out back to back at 4-byte alignment, WGSL at each type's
/// own alignment (8 for `vec2<u32>`): the two layouts agree exactly when every field starts at
/// a multiple of its WGSL alignment, and the block's size is a multiple of 16 bytes (the
/// granularity of GL's std140 blocks and D3D's constant buffers). Both are checked at compile
/// time; name explicit padding fields `_pad...`.
macro_rules! wgsl_params {
    (
        $(#[doc = $doc:literal])*
        $vis:vis struct $name:ident {
            $( $(#[doc = $field_doc:literal])* $field:ident : $ty:tt ),* $(,)?
        }
    ) => {
        $(#[doc = $doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $( $(#[doc = $field_doc])* pub $field: $ty, )*
        }

        const _: () = {
            $(
                assert!(
                    core::mem::offset_of!($name, $field) % wgsl_params!(@align $ty) == 0,
                    concat!(
                        stringify!($name), "::", stringify!($field),
                        " starts off its WGSL alignment: add a padding field before it"
                    )
                );
            )*
            assert!(
                core::mem::size_of::<$name>() % 16 == 0,
                concat!(stringify!($name), " must be padded to a multiple of 16 bytes")
            );
        };

        impl $crate::backend::gpu::shaders::WgslParams for $name {
            const WGSL: &'static str = concat!(
                "// Generated from ", module_path!(), "::", stringify!($name), ".\n",
                "struct Params {\n",
                $(
                    $("    //", $field_doc, "\n",)*
                    "    ", stringify!($field), ": ", wgsl_params!(@type $ty), ",\n",
                )*
                "}\n"
            );
        }
    };
    (@type u32) => { "u32" };
    (@type f32) => { "f32" };
    (@type [u32; 2]) => { "vec2<u32>" };
    (@align u32) => { 4 };
    (@align f32) => { 4 };
    (@align [u32; 2]) => { 8 };
}
pub(crate) use wgsl_params;

/// An entry point of a `K` kernel and the storage buffers its launcher binds, by binding index,
/// in the order the launcher passes them (binding 0, the Params block, is always bound too).
/// The one statement of which bindings an entry point takes: launchers dispatch through it and
/// tests/shaders.rs checks with naga that the entry point uses exactly these bindings.
pub struct Entry<K, const N: usize> {
    pub name: &'static str,
    pub bindings: [u32; N],
    kernel: PhantomData<fn() -> K>,
}

impl<K, const N: usize> Entry<K, N> {
    pub const fn new(name: &'static str, bindings: [u32; N]) -> Self {
        Entry {
            name,
            bindings,
            kernel: PhantomData,
        }
    }

    /// The entry point and its storage bindings, whatever their number.
    pub const fn point(&'static self) -> EntryPoint {
        EntryPoint {
            name: self.name,
            bindings: &self.bindings,
        }
    }
}

/// An [`Entry`] as data: its name and storage binding indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    pub name: &'static str,
    pub bindings: &'static [u32],
}

/// One op family's kernel variants: a value of the type names one compilable module.
pub(crate) trait KernelFamily:
    Debug + Clone + Copy + PartialEq + Eq + Hash + Into<Kernel>
{
    /// The uniform block every entry point of the family reads at binding 0.
    type Params: WgslParams;

    /// A unique, readable name.
    fn name(&self) -> String;

    /// Values of the source's `override` constants.
    fn constants(&self) -> Vec<(&'static str, f64)>;

    /// The WGSL source without `struct Params`, generated constants substituted.
    fn body(&self) -> String;

    /// Every entry point the family's launchers dispatch with this variant.
    fn entries(&self) -> &'static [EntryPoint];

    /// Every variant kernel_config can choose (at the preferred workgroup size), for checking
    /// without a GPU.
    fn all() -> Vec<Self>;

    /// The WGSL source, `struct Params` included (and `enable` directives in front).
    fn source(&self) -> String {
        hoist_directives(&format!("{}\n{}", Self::Params::WGSL, self.body()))
    }
}

/// A kernel family whose knobs are its operands' storage dtype and its workgroup size: the
/// variant struct and its [`KernelFamily`] impl, from the name's prefix, the Params type, the
/// entry table and a closure from the dtype to the WGSL body (which declares its operands
/// with [`super::operand::declare`]).
macro_rules! storage_family {
    ($(#[$meta:meta])* $kernel:ident, $prefix:literal, $params:ty, $entries:expr, $body:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $kernel {
            pub dtype: $crate::dtype::DType,
            pub workgroup: u32,
        }

        impl $crate::backend::gpu::shaders::KernelFamily for $kernel {
            type Params = $params;

            fn name(&self) -> String {
                format!(concat!($prefix, "_{}_wg{}"), self.dtype, self.workgroup)
            }

            fn constants(&self) -> Vec<(&'static str, f64)> {
                $crate::backend::gpu::shaders::workgroup_constant(self.workgroup)
            }

            fn body(&self) -> String {
                let body: fn($crate::dtype::DType) -> String = $body;
                body(self.dtype)
            }

            fn entries(&self) -> &'static [$crate::backend::gpu::shaders::EntryPoint] {
                $entries
            }

            fn all() -> Vec<Self> {
                $crate::dtype::DType::ALL
                    .into_iter()
                    .map(|dtype| $kernel {
                        dtype,
                        workgroup: $crate::backend::gpu::shaders::CHECKED_WORKGROUP,
                    })
                    .collect()
            }
        }
    };
}
pub(crate) use storage_family;

/// The `override WG` constant of a family that takes nothing else.
pub(crate) fn workgroup_constant(workgroup: u32) -> Vec<(&'static str, f64)> {
    vec![("WG", workgroup as f64)]
}

/// The workgroup size [`KernelFamily::all`] generates variants at.
pub(crate) const CHECKED_WORKGROUP: u32 = ELEMENTWISE_WORKGROUP;

macro_rules! kernels {
    ($( $(#[doc = $doc:literal])* $variant:ident($family:ty), )*) => {
        /// One compilable shader module, and the key its pipelines are cached under.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $( $(#[doc = $doc])* $variant($family), )*
        }

        $(
            impl From<$family> for Kernel {
                fn from(kernel: $family) -> Kernel {
                    Kernel::$variant(kernel)
                }
            }
        )*

        impl Kernel {
            /// A unique, readable name.
            pub fn name(&self) -> String {
                match self { $( Kernel::$variant(k) => k.name(), )* }
            }

            /// Values of the source's `override` constants.
            pub fn constants(&self) -> Vec<(&'static str, f64)> {
                match self { $( Kernel::$variant(k) => k.constants(), )* }
            }

            /// The WGSL source: `struct Params`, generated constants and shared code included.
            pub fn source(&self) -> String {
                match self { $( Kernel::$variant(k) => k.source(), )* }
            }

            /// Every entry point its launchers dispatch, with the storage bindings each binds.
            pub fn entries(&self) -> &'static [EntryPoint] {
                match self { $( Kernel::$variant(k) => k.entries(), )* }
            }

            /// Every variant the backend can compile (at the preferred workgroup size), for
            /// validation and translation without a GPU.
            pub fn all() -> Vec<Kernel> {
                let mut all = Vec::new();
                $( all.extend(<$family as KernelFamily>::all().into_iter().map(Kernel::$variant)); )*
                all
            }
        }
    };
}

kernels! {
    /// matmul.wgsl for a tile and layout, with vec4 or scalar loads, with or without the GELU
    /// epilogue.
    Matmul(MatmulKernel),
    /// matmul_splits.wgsl: the second pass of a product split over K.
    MatmulSplits(MatmulSplitsKernel),
    /// matmul_coop.wgsl: f16 products on cooperative matrices, per layout, output and bias
    /// type, with or without the GELU epilogue.
    MatmulCoop(MatmulCoopKernel),
    /// elementwise.wgsl in one storage dtype: add, scale, GELU and its gradient.
    Elementwise(ElementwiseKernel),
    /// layernorm.wgsl: forward and the dx part of backward.
    LayerNorm(LayerNormKernel),
    /// column_sums.wgsl: bias gradients and layer norm's dw and db.
    ColumnSums(ColumnSumsKernel),
    /// pool.wgsl: masked mean pool and its gradient.
    Pool(PoolKernel),
    /// cross_entropy.wgsl: loss, hits and the gradient.
    CrossEntropy(CrossEntropyKernel),
    /// optim.wgsl: AdamW, gradient norm, clipping, the finite check.
    Optim(OptimKernel),
    /// philox.wgsl + dropout.wgsl.
    Dropout(DropoutKernel),
    /// philox.wgsl + attention.wgsl for one head size, query block and key tile.
    Attention(AttentionVariant),
    /// cast.wgsl from one dtype to another: casts and copies.
    Cast(CastKernel),
}

/// workgroup_reduce.wgsl, with the largest workgroup it serves: the elementwise workgroup,
/// which kernel_config never raises above [`ELEMENTWISE_WORKGROUP`].
pub(crate) fn workgroup_reduce_source() -> String {
    format!("const MAX_WG: u32 = {ELEMENTWISE_WORKGROUP}u;\n{WORKGROUP_REDUCE}")
}

/// gelu.wgsl with the constants of `math`'s GELU in front, so that both backends use one fit.
pub(crate) fn gelu_source() -> String {
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

/// Each code line (not a comment) that holds `$m` (m = `marker`), `count` times, with `$m`
/// replaced by 0, 1, ..., `$m4` by the value / 4 and `$mc` by x, y, z or w (the value % 4: a
/// vec4's component): straight-line code over an invocation's named registers. A private
/// array indexed by anything but a constant lives in local memory on NVIDIA's driver, and
/// WGSL has no way to ask for a loop to be unrolled.
pub(crate) fn repeat_marked_lines(src: &str, marker: char, count: u32) -> String {
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
