// Masked mean pool over time and its gradient. h is [batch, t, d], mask [batch, t] (1.0 =
// real frame, 0.0 = padding), pooled [batch, d]; count[b] = Σ_s mask[b, s].
//   mean_pool_fwd: pooled[b, j] = Σ_s mask[b, s]·h[b, s, j] / count[b]   (one invocation per (b, j))
//   mean_pool_bwd: dh[b, s, j] = mask[b, s]·dpooled[b, j] / count[b]     (one invocation per element)
// A clip with no real frame pools to zeros and gets zero gradients. Bindings are read_write
// so that operands may share an arena.

override WG: u32 = 256u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/pool.rs.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> h: array<f32>;
@group(0) @binding(2) var<storage, read_write> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> pooled: array<f32>;

fn invocation(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * p.groups_x + wg.x) * WG + lid;
}

fn frames(b: u32) -> f32 {
    var count = 0.0;
    for (var s = 0u; s < p.t; s++) {
        count += mask[p.mask_offset + b * p.t + s];
    }
    return count;
}

@compute @workgroup_size(WG)
fn mean_pool_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = invocation(wg, lid);
    if i >= p.batch * p.d {
        return;
    }
    let b = i / p.d;
    let j = i % p.d;
    var sum = 0.0;
    for (var s = 0u; s < p.t; s++) {
        let weight = mask[p.mask_offset + b * p.t + s];
        if weight != 0.0 {
            sum += weight * h[p.h_offset + (b * p.t + s) * p.d + j];
        }
    }
    let count = frames(b);
    pooled[p.pooled_offset + i] = select(0.0, sum / count, count > 0.0);
}

// Here `h` is dh (written) and `pooled` is dpooled (read).
@compute @workgroup_size(WG)
fn mean_pool_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = invocation(wg, lid);
    if i >= p.batch * p.t * p.d {
        return;
    }
    let b = i / (p.t * p.d);
    let s = (i / p.d) % p.t;
    let j = i % p.d;
    let count = frames(b);
    let weight = select(0.0, mask[p.mask_offset + b * p.t + s] / count, count > 0.0);
    h[p.h_offset + i] = weight * pooled[p.pooled_offset + b * p.d + j];
}
