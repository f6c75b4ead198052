// Dropout over n elements with the counter-based mask of philox.wgsl (concatenated in front
// of this file): out[i] = x[i]·keep_scale where dropout_uniform(.., i) >= p, else 0. One
// invocation per Philox call, writing the call's eight elements (those below n), so that each
// call is computed once; neighbouring invocations write neighbouring elements. The operands
// x and out and their access functions are generated per storage dtype by
// src/backend/gpu/operand.rs. Bindings are read_write so that the op may run in place.

override WG: u32 = 256u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/dropout.rs.
@group(0) @binding(0) var<uniform> p: Params;
//!OPERANDS

@compute @workgroup_size(WG)
fn dropout(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let call = (wg.y * p.groups_x + wg.x) * WG + lid;
    let first = ((call >> 3u) << 6u) | (call & 7u);
    if first >= p.n {
        return;
    }
    let r = dropout_call(p.seed, p.step, p.site, call);
    for (var j = 0u; j < 4u; j++) {
        for (var h = 0u; h < 2u; h++) {
            let i = first + 16u * j + 8u * h;
            if i < p.n {
                let bits = (r[j] >> (16u * h)) & 0xFFFFu;
                let keep = f32(bits) * PHILOX_INV_2_16 >= p.p;
                out_st(p.out_offset + i, select(0.0, x_ld(p.x_offset + i) * p.keep_scale, keep));
            }
        }
    }
}
