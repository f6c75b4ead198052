// Cast of n elements between f32, f16 and bf16 (round to nearest even; NaN stays NaN,
// overflow becomes infinity), and every plain copy of the GPU backend (faster than the copy
// engine on NVIDIA). half.wgsl is put in front (the bit conversions).
//
// Buffers are words: 16-bit elements are packed two per u32, low half first, and 16-bit
// tensors start on an even element. One invocation writes one output word: one f32, or two
// 16-bit elements. When n is odd, the last word's upper half belongs to whatever follows the
// tensor and is kept.
//
// SRC and DST (0 = f32, 1 = f16, 2 = bf16) are generated per variant by
// src/backend/gpu/ops/cast.rs.

//!CONSTS

override WG: u32 = 256u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/cast.rs.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

// Raw bits of source element i.
fn source_bits(i: u32) -> u32 {
    if SRC == 0u {
        return src[p.src_offset + i];
    }
    let e = p.src_offset + i;
    return (src[e / 2u] >> (16u * (e % 2u))) & 0xffffu;
}

fn decode(bits: u32) -> f32 {
    if SRC == 0u {
        return bitcast<f32>(bits);
    }
    if SRC == 1u {
        return f16_to_f32(bits);
    }
    return bf16_to_f32(bits);
}

fn encode(x: f32) -> u32 {
    if DST == 0u {
        return bitcast<u32>(x);
    }
    if DST == 1u {
        return f32_to_f16(x);
    }
    return f32_to_bf16(x);
}

// Element i converted, as raw bits of DST (bit-exact when SRC == DST).
fn converted(i: u32) -> u32 {
    let bits = source_bits(i);
    if SRC == DST {
        return bits;
    }
    return encode(decode(bits));
}

@compute @workgroup_size(WG)
fn convert(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = (wg.y * p.groups_x + wg.x) * WG + lid;
    if DST == 0u {
        if w < p.n {
            dst[p.dst_offset + w] = converted(w);
        }
        return;
    }
    let first = 2u * w;
    if first >= p.n {
        return;
    }
    let word = p.dst_offset / 2u + w;
    var high = dst[word] >> 16u;
    if first + 1u < p.n {
        high = converted(first + 1u);
    }
    dst[word] = converted(first) | (high << 16u);
}
