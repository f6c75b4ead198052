// Cast of n elements between f32, f16 and bf16 (round to nearest even; NaN stays NaN,
// overflow becomes infinity), and every plain copy of the GPU backend (faster than the copy
// engine on NVIDIA).
//
// Buffers are words: 16-bit elements are packed two per u32, low half first, and 16-bit
// tensors start on an even element. One invocation writes one output word: one f32, or two
// 16-bit elements. When n is odd, the last word's upper half belongs to whatever follows the
// tensor and is kept. Conversions are done with integer arithmetic (and one exact ldexp), so
// they are correctly rounded and the same on every adapter, subnormals included.
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

fn f16_to_f32(h: u32) -> f32 {
    let negative = (h & 0x8000u) != 0u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if e == 0u {
        let v = ldexp(f32(m), -24);
        return select(v, -v, negative);
    }
    let sign = (h & 0x8000u) << 16u;
    if e == 31u {
        return bitcast<f32>(sign | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

fn f32_to_f16(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    let sign = (bits >> 16u) & 0x8000u;
    let mag = bits & 0x7fffffffu;
    if mag > 0x7f800000u {
        return sign | 0x7e00u; // NaN
    }
    if mag >= 0x477ff000u {
        return sign | 0x7c00u; // 65520 and above round to infinity
    }
    if mag >= 0x38800000u {
        // Normal: rebias the exponent (127 -> 15), round the 13 dropped bits to nearest even.
        let v = mag - 0x38000000u;
        return sign | ((v + 0xfffu + ((v >> 13u) & 1u)) >> 13u);
    }
    if mag <= 0x33000000u {
        return sign; // at most 2^-25: rounds to zero
    }
    // Subnormal: the value in units of 2^-24 is the 24-bit significand shifted right.
    let e = mag >> 23u;
    let significand = (mag & 0x7fffffu) | 0x800000u;
    let shift = 126u - e;
    let q = significand >> shift;
    let rest = significand & ((1u << shift) - 1u);
    let halfway = 1u << (shift - 1u);
    let round_up = rest > halfway || (rest == halfway && (q & 1u) == 1u);
    return sign | (q + select(0u, 1u, round_up));
}

fn f32_to_bf16(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    if (bits & 0x7fffffffu) > 0x7f800000u {
        return (bits >> 16u) | 0x40u; // quiet NaN
    }
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}

fn decode(bits: u32) -> f32 {
    if SRC == 0u {
        return bitcast<f32>(bits);
    }
    if SRC == 1u {
        return f16_to_f32(bits);
    }
    return bitcast<f32>(bits << 16u);
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
