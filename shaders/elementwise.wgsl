// Elementwise f32 ops over n elements: out[i] = a[i] + b[i] (add), out[i] = alpha·a[i]
// (scale), out[i] = gelu(a[i]) (gelu_fwd), out[i] = b[i]·gelu'(a[i]) (gelu_bwd, a = x, b = dy).
// gelu.wgsl is concatenated in front (gelu, gelu_grad).
//
// One invocation per element; the grid is two-dimensional so that more than
// 65535 workgroups fit (element i = (wg.y·groups_x + wg.x)·WG + local index). Operands are
// bound read_write so that the same buffer may be an input and the output (in-place ops).

override WG: u32 = 256u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/elementwise.rs.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn element(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * p.groups_x + wg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if i < p.n {
        out[p.out_offset + i] = a[p.a_offset + i] + b[p.b_offset + i];
    }
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if i < p.n {
        out[p.out_offset + i] = p.alpha * a[p.a_offset + i];
    }
}

@compute @workgroup_size(WG)
fn gelu_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if i < p.n {
        let x = a[p.a_offset + i];
        out[p.out_offset + i] = gelu(x);
    }
}

@compute @workgroup_size(WG)
fn gelu_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = element(wg, lid);
    if i < p.n {
        let x = a[p.a_offset + i];
        out[p.out_offset + i] = b[p.b_offset + i] * gelu_grad(x);
    }
}
