// The second pass of a matrix product split over K (matmul.wgsl): C = Σ over slices of the
// f32 partial products (in slice order, so the same bits on every run) + bias[N], rounded
// once where C is stored. One invocation per word of C (one f32, or two 16-bit elements, so
// that 16-bit stores are whole words but for an odd tail; C is one item, a view starting on
// an even element); the grid is folded into two dimensions as in elementwise.wgsl.
//
// The operands partials ([slices, M, N], f32), bias and c, their access functions
// (src/backend/gpu/operand.rs) and PER, the elements of one word of C, are generated per
// dtype by src/backend/gpu/ops/matmul.rs.

override WG: u32 = 256u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/matmul.rs.
@group(0) @binding(0) var<uniform> p: Params;
//!OPERANDS

// Element i of C (below M·N), before it is stored.
fn sum_at(i: u32) -> f32 {
    let len = p.m * p.n;
    var v = partials_ld(i);
    for (var s = 1u; s < p.slices; s++) {
        v += partials_ld(s * len + i);
    }
    if p.has_bias != 0u {
        v += bias_ld(p.bias_offset + i % p.n);
    }
    return v;
}

@compute @workgroup_size(WG)
fn sum_slices(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = ((wg.y * p.groups_x + wg.x) * WG + lid) * PER;
    let len = p.m * p.n;
    if i >= len {
        return;
    }
    if PER == 1u || i + 1u == len {
        c_st(p.c_offset + i, sum_at(i));
    } else {
        c_st2(p.c_offset + i, vec2<f32>(sum_at(i), sum_at(i + 1u)));
    }
}
