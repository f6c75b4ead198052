//! Access to two neighbouring elements of an operand at once, for kernels whose invocations
//! handle a 32-bit word of 16-bit elements where the layout gives them one (the half-precision
//! variants of layer norm, column sums, mean pool and cross-entropy).

use crate::backend::gpu::operand::{declare, per_word, Access, Operand};
use crate::dtype::DType;

/// row_slots.wgsl: a row's elements in slots of one word, for kernels with a workgroup per
/// row.
pub(crate) const ROW_SLOTS: &str = include_str!("../../../../shaders/row_slots.wgsl");

/// The operands of a kernel whose invocations handle a word of `PER` elements of storage
/// `dtype` (the generated `const PER`: 1 for f32, 2 for 16-bit): their declarations, with
/// [`pair_access`] for `paired`.
pub(crate) fn declare_paired(dtype: DType, paired: &[Operand], others: &[Operand]) -> String {
    let all: Vec<Operand> = paired.iter().chain(others).copied().collect();
    format!(
        "const PER: u32 = {}u;\n{}{}",
        per_word(dtype),
        declare(&all),
        pair_access(paired)
    )
}

/// For each of `operands` (declared with [`declare`]):
///
/// - `NAME_pair(i, two) -> vec2<f32>`: element i and, with `two`, element i + 1 (else 0): one
///   word's load where i is even, two loads where the pair straddles words;
/// - for written operands, `NAME_put(i, two, v)`: v.x at i and, with `two`, v.y at i + 1, where
///   i is then even and the invocation writes the word whole; without `two`, v.x alone, safe
///   beside a neighbour that writes the word's other half.
///
/// With `two` a constant false (f32 variants) these are the plain element access.
fn pair_access(operands: &[Operand]) -> String {
    let mut out = String::new();
    for &Operand { name, access, .. } in operands {
        out.push_str(&format!(
            "fn {name}_pair(i: u32, two: bool) -> vec2<f32> {{\n    \
             if !two {{\n        return vec2<f32>({name}_ld(i), 0.0);\n    }}\n    \
             if (i & 1u) == 0u {{\n        return {name}_ld2(i);\n    }}\n    \
             return vec2<f32>({name}_ld(i), {name}_ld(i + 1u));\n}}\n"
        ));
        if access == Access::Write {
            out.push_str(&format!(
                "fn {name}_put(i: u32, two: bool, v: vec2<f32>) {{\n    \
                 if two {{\n        {name}_st2(i, v);\n    }} else {{\n        \
                 {name}_st(i, v.x);\n    }}\n}}\n"
            ));
        }
    }
    out
}
