// Elementwise ops over n elements in one storage dtype (f32 arithmetic): out[i] = a[i] + b[i]
// (add), out[i] = alpha·a[i] (scale), out[i] = gelu(a[i]) (gelu_fwd), out[i] = b[i]·gelu'(a[i])
// (gelu_bwd, a = x, b = dy). gelu.wgsl is concatenated in front (gelu, gelu_grad); the
// operands a, b and out and their access functions (a_ld, out_st2, ...) are generated per
// dtype by src/backend/gpu/operand.rs, with PER, the elements of one output word.
//
// One invocation per output word (one f32, or two 16-bit elements, so that 16-bit stores are
// whole words but for an odd tail); the grid is two-dimensional so that more than 65535
// workgroups fit (word w = (wg.y·groups_x + wg.x)·WG + local index). Operands are bound
// read_write so that the same buffer may be an input and the output (in-place ops).

override WG: u32 = 256u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/elementwise.rs.
@group(0) @binding(0) var<uniform> p: Params;

//!OPERANDS

// The first element of the invocation's word.
fn first(wg: vec3<u32>, lid: u32) -> u32 {
    return ((wg.y * p.groups_x + wg.x) * WG + lid) * PER;
}

// Writes a 16-bit word's results v = (f(i), f(i + 1)), starting at element i (< n); v.y only
// where i + 1 < n. (Every entry point spells out its own f, as WGSL has no function values.)
fn store_pair(i: u32, v: vec2<f32>) {
    if i + 1u == p.n {
        out_st(p.out_offset + i, v.x);
    } else {
        out_st2(p.out_offset + i, v);
    }
}

// The second element of the word at i, clamped to the last element (its value is then unused).
fn second(i: u32) -> u32 {
    return min(i + 1u, p.n - 1u);
}

fn add_at(i: u32) -> f32 {
    return a_ld(p.a_offset + i) + b_ld(p.b_offset + i);
}

fn scale_at(i: u32) -> f32 {
    return p.alpha * a_ld(p.a_offset + i);
}

fn gelu_fwd_at(i: u32) -> f32 {
    return gelu(a_ld(p.a_offset + i));
}

fn gelu_bwd_at(i: u32) -> f32 {
    return b_ld(p.b_offset + i) * gelu_grad(a_ld(p.a_offset + i));
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = first(wg, lid);
    if i >= p.n {
        return;
    }
    if PER == 1u {
        out_st(p.out_offset + i, add_at(i));
    } else {
        store_pair(i, vec2<f32>(add_at(i), add_at(second(i))));
    }
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = first(wg, lid);
    if i >= p.n {
        return;
    }
    if PER == 1u {
        out_st(p.out_offset + i, scale_at(i));
    } else {
        store_pair(i, vec2<f32>(scale_at(i), scale_at(second(i))));
    }
}

@compute @workgroup_size(WG)
fn gelu_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = first(wg, lid);
    if i >= p.n {
        return;
    }
    if PER == 1u {
        out_st(p.out_offset + i, gelu_fwd_at(i));
    } else {
        store_pair(i, vec2<f32>(gelu_fwd_at(i), gelu_fwd_at(second(i))));
    }
}

@compute @workgroup_size(WG)
fn gelu_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = first(wg, lid);
    if i >= p.n {
        return;
    }
    if PER == 1u {
        out_st(p.out_offset + i, gelu_bwd_at(i));
    } else {
        store_pair(i, vec2<f32>(gelu_bwd_at(i), gelu_bwd_at(second(i))));
    }
}
