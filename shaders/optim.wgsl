// Optimizer ops over n gradients (whole arenas at once):
//   adamw:              p = p·decay − step_size·m/(√v/√(1−β2^t) + eps), after
//                       m = β1·m + (1−β1)·g, v = β2·v + (1−β2)·g² (decay, step size and the
//                       bias corrections come from the host, computed once in f64)
//   sumsq_partials:     partials[g] = Σ x² over the CHUNK elements of workgroup g
//   nonfinite_partials: partials[g] = 1 if any of them is not finite, else 0; and x *= scale
//   finish_norm:        out[0] = √Σ_g partials[g];  finish_any: out[0] = max_g partials[g]
//   clip:               x *= min(1, max_norm / (norm[0] + 1e-6)), norm read on the device
// Partials are summed by workgroup_reduce (workgroup_reduce.wgsl, concatenated in front) and
// then in workgroup order: the same bits on every run.
// Bindings are read_write so that operands may share an arena.

override WG: u32 = 256u;
// Elements each invocation of the partials kernels handles (WG·ITEMS per workgroup).
override ITEMS: u32 = 16u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/optim.rs.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

fn group(wg: vec3<u32>) -> u32 {
    return wg.y * p.groups_x + wg.x;
}

@compute @workgroup_size(WG)
fn adamw(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = group(wg) * WG + lid;
    if i >= p.n {
        return;
    }
    let grad = g[p.g_offset + i];
    let mi = p.beta1 * m[p.m_offset + i] + (1.0 - p.beta1) * grad;
    let vi = p.beta2 * v[p.v_offset + i] + (1.0 - p.beta2) * grad * grad;
    m[p.m_offset + i] = mi;
    v[p.v_offset + i] = vi;
    let denom = sqrt(vi) / p.bc2_sqrt + p.eps;
    x[p.x_offset + i] = x[p.x_offset + i] * p.decay - p.step_size * mi / denom;
}

@compute @workgroup_size(WG)
fn sumsq_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = group(wg) * WG * ITEMS;
    var s = 0.0;
    for (var k = 0u; k < ITEMS; k++) {
        let i = first + k * WG + lid;
        if i < p.n {
            let value = x[p.x_offset + i];
            s += value * value;
        }
    }
    let total = workgroup_reduce(lid, vec2<f32>(s, 0.0), false).x;
    if lid == 0u {
        partials[group(wg)] = total;
    }
}

@compute @workgroup_size(WG)
fn nonfinite_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = group(wg) * WG * ITEMS;
    var bad = 0.0;
    for (var k = 0u; k < ITEMS; k++) {
        let i = first + k * WG + lid;
        if i < p.n {
            let value = x[p.x_offset + i];
            // Exponent bits all ones: an infinity or a NaN (a NaN compares unequal even to
            // itself, which compilers may fold away; the bits cannot be).
            if (bitcast<u32>(value) & 0x7f800000u) == 0x7f800000u {
                bad = 1.0;
            }
            x[p.x_offset + i] = value * p.scale;
        }
    }
    let any = workgroup_reduce(lid, vec2<f32>(bad, 0.0), true).x;
    if lid == 0u {
        partials[group(wg)] = any;
    }
}

@compute @workgroup_size(1)
fn finish_norm() {
    var s = 0.0;
    for (var k = 0u; k < p.partials_count; k++) {
        s += partials[k];
    }
    out[p.out_offset] = sqrt(s);
}

@compute @workgroup_size(1)
fn finish_any() {
    var any = 0.0;
    for (var k = 0u; k < p.partials_count; k++) {
        any = max(any, partials[k]);
    }
    out[p.out_offset] = any;
}

// Here `g` holds the norm at g_offset.
@compute @workgroup_size(WG)
fn clip(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = group(wg) * WG + lid;
    if i >= p.n {
        return;
    }
    // A NaN norm makes the gradients NaN, as PyTorch's clip_grad_norm_ does.
    let ratio = p.max_norm / (g[p.g_offset] + 1e-6);
    let coef = select(ratio, 1.0, ratio >= 1.0);
    x[p.x_offset + i] = x[p.x_offset + i] * coef;
}
