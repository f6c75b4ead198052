//! How a kernel binds a tensor operand in its storage dtype, so that one WGSL source serves
//! f32, f16 and bf16: [`declare`] generates each operand's binding and the functions the
//! kernel reads and writes it through, in f32 whatever the storage (indices are elements,
//! offsets included):
//!
//! - `NAME_ld(i) -> f32`; `NAME_ld2(i) -> vec2<f32>` (i even: elements i and i + 1);
//! - for written operands, `NAME_st(i, v)`, safe even where another invocation writes the
//!   other half of the same 32-bit word, and `NAME_st2(i, v: vec2<f32>)` (i even), which
//!   writes one whole word of a 16-bit tensor.
//!
//! The storage layouts (16-bit elements two per word, low half first, views on an even
//! element) are the GPU backend's buffers as the cast kernel writes them:
//!
//! - f32: `array<f32>`.
//! - f16: `array<f16>` (`enable f16;`, adapters with SHADER_F16): loads convert in hardware;
//!   stores round with half.wgsl's integer conversion (correctly rounded, overflow to
//!   infinity on every adapter), whose exact value WGSL's f16() then converts without
//!   rounding, and write their 16 bits alone.
//! - bf16: WGSL has no 16-bit integer nor bf16 type, so read operands are `array<u32>` words
//!   and written ones `array<atomic<u32>>`: a lone 16-bit store clears and sets its half with
//!   two atomic bit operations, which commute with the other half's (never a lost update),
//!   and a whole word is one atomic store.

use crate::dtype::DType;

/// half.wgsl: f32 <-> f16/bf16 bit conversions.
pub(crate) const HALF: &str = include_str!("../../../shaders/half.wgsl");

/// Whether a kernel only reads an operand or also writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    /// Read through a `read` binding: one buffer may then back several such operands and
    /// the product's other read-only bindings (weights and biases share the parameter arena),
    /// but none of the dispatch's writable ones.
    ReadOnly,
}

/// One tensor operand of a kernel: its WGSL name, binding index, dtype and access.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand {
    pub name: &'static str,
    pub binding: u32,
    pub dtype: DType,
    pub access: Access,
}

impl Operand {
    pub const fn read(name: &'static str, binding: u32, dtype: DType) -> Operand {
        Operand {
            name,
            binding,
            dtype,
            access: Access::Read,
        }
    }

    pub const fn read_only(name: &'static str, binding: u32, dtype: DType) -> Operand {
        Operand {
            name,
            binding,
            dtype,
            access: Access::ReadOnly,
        }
    }

    pub const fn write(name: &'static str, binding: u32, dtype: DType) -> Operand {
        Operand {
            name,
            binding,
            dtype,
            access: Access::Write,
        }
    }

    fn wgsl(&self) -> String {
        let Operand { name, binding, .. } = *self;
        let write = self.access == Access::Write;
        let mode = if self.access == Access::ReadOnly {
            "read"
        } else {
            "read_write"
        };
        let (element, ld, st) = match (self.dtype, write) {
            (DType::F32, _) => ("f32", format!("{name}[i]"), format!("{name}[i] = v;")),
            (DType::F16, _) => (
                "f16",
                format!("f32({name}[i])"),
                format!("{name}[i] = f16(f16_to_f32(f32_to_f16(v)));"),
            ),
            (DType::Bf16, false) => (
                "u32",
                format!("bf16_to_f32(({name}[i >> 1u] >> (16u * (i & 1u))) & 0xffffu)"),
                String::new(),
            ),
            (DType::Bf16, true) => (
                "atomic<u32>",
                format!(
                    "bf16_to_f32((atomicLoad(&{name}[i >> 1u]) >> (16u * (i & 1u))) & 0xffffu)"
                ),
                format!(
                    "let shift = 16u * (i & 1u);\n    \
                     atomicAnd(&{name}[i >> 1u], ~(0xffffu << shift));\n    \
                     atomicOr(&{name}[i >> 1u], f32_to_bf16(v) << shift);"
                ),
            ),
        };
        // A bf16 pair is one word, read once.
        let bf16_pair = |word: String| {
            format!(
                "let w = {word};\n    \
                 return vec2<f32>(bf16_to_f32(w & 0xffffu), bf16_to_f32(w >> 16u));"
            )
        };
        let ld2 = match (self.dtype, write) {
            (DType::Bf16, false) => bf16_pair(format!("{name}[i >> 1u]")),
            (DType::Bf16, true) => bf16_pair(format!("atomicLoad(&{name}[i >> 1u])")),
            _ => format!("return vec2<f32>({name}_ld(i), {name}_ld(i + 1u));"),
        };
        let mut out = format!(
            "@group(0) @binding({binding}) var<storage, {mode}> {name}: array<{element}>;\n\
             fn {name}_ld(i: u32) -> f32 {{\n    return {ld};\n}}\n\
             fn {name}_ld2(i: u32) -> vec2<f32> {{\n    {ld2}\n}}\n"
        );
        if write {
            let st2 = if self.dtype == DType::Bf16 {
                format!(
                    "atomicStore(&{name}[i >> 1u], f32_to_bf16(v.x) | (f32_to_bf16(v.y) << 16u));"
                )
            } else {
                format!("{name}_st(i, v.x);\n    {name}_st(i + 1u, v.y);")
            };
            out.push_str(&format!(
                "fn {name}_st(i: u32, v: f32) {{\n    {st}\n}}\n\
                 fn {name}_st2(i: u32, v: vec2<f32>) {{\n    {st2}\n}}\n"
            ));
        }
        out
    }
}

/// The bindings and access functions of `operands`, with half.wgsl and `enable f16;` where a
/// 16-bit operand needs them ([`hoist_directives`] moves the directive to the front).
pub(crate) fn declare(operands: &[Operand]) -> String {
    let mut out = String::new();
    if operands.iter().any(|o| o.dtype == DType::F16) {
        out.push_str("enable f16;\n");
    }
    if operands.iter().any(|o| o.dtype != DType::F32) {
        out.push_str(HALF);
    }
    for operand in operands {
        out.push_str(&operand.wgsl());
    }
    out
}

/// Elements an invocation of a one-word-per-invocation kernel handles: one f32, or the two
/// 16-bit elements of a word (so that it stores whole words).
pub(crate) fn per_word(dtype: DType) -> u32 {
    4 / dtype.size_bytes() as u32
}

/// `source` with its `enable` directives (deduplicated) moved to the front, where WGSL
/// wants them, ahead of generated declarations.
pub(crate) fn hoist_directives(source: &str) -> String {
    let mut directives: Vec<&str> = Vec::new();
    let mut rest = String::with_capacity(source.len());
    for line in source.lines() {
        if line.starts_with("enable ") {
            if !directives.contains(&line) {
                directives.push(line);
            }
        } else {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    let mut out = directives.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out + &rest
}
