// Bit-exact conversions between f32 and the 16-bit storage formats, on raw bits in a u32
// (the low 16 bits), with integer arithmetic (and one exact ldexp): correctly rounded (to
// nearest even), overflow to infinity, NaN kept NaN, subnormals included, the same on every
// adapter and the same as the CPU backend's `half` crate. WGSL's own f16 conversions leave
// rounding and overflow to the implementation, and loss scaling needs an overflow to be an
// infinity. Put in front of every kernel that stores or loads a 16-bit tensor.

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

fn bf16_to_f32(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}
