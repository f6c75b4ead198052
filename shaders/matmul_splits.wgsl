// The second pass of a matrix product split over K (matmul.wgsl): C = Σ over slices of the
// partial products (in slice order, so the same bits on every run) + bias[N]. One invocation
// per element of C; the grid is folded into two dimensions as in elementwise.wgsl.

override WG: u32 = 256u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/matmul.rs.
@group(0) @binding(0) var<uniform> p: Params;
// [slices, M, N]
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(WG)
fn sum_slices(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * p.groups_x + wg.x) * WG + lid;
    let len = p.m * p.n;
    if i >= len {
        return;
    }
    var v = partials[i];
    for (var s = 1u; s < p.slices; s++) {
        v += partials[s * len + i];
    }
    if p.has_bias != 0u {
        v += bias[p.bias_offset + i % p.n];
    }
    c[p.c_offset + i] = v;
}
