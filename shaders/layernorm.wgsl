// Layer norm over the last dimension of x [rows, cols], forward and the dx part of backward.
//
// One workgroup per row (row = wg.y·groups_x + wg.x). Sums over a row use workgroup_reduce
// (workgroup_reduce.wgsl, concatenated in front).
//   layernorm_fwd: mean = Σx/cols, var = Σ(x−mean)²/cols, rstd = 1/√(var+eps),
//                  y = (x−mean)·rstd·w + b; saves mean and rstd per row.
//   layernorm_bwd: dx = rstd·(dy·w − mean(dy·w) − xhat·mean(dy·w·xhat)), xhat = (x−mean)·rstd.
// dw and db are column sums over rows: column_sums.wgsl.
// Every binding is read_write: one buffer (an arena) may hold inputs and outputs, and wgpu
// refuses a buffer bound both read-only and writable in one dispatch.

override WG: u32 = 256u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/layernorm.rs.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(7) var<storage, read_write> dy: array<f32>;

@compute @workgroup_size(WG)
fn layernorm_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * p.groups_x + wg.x;
    if row >= p.rows {
        return;
    }
    let base = p.x_offset + row * p.cols;
    let n = f32(p.cols);
    var s = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        s += x[base + j];
    }
    let mu = workgroup_reduce(lid, vec2<f32>(s, 0.0), false).x / n;
    var ss = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        let d = x[base + j] - mu;
        ss += d * d;
    }
    let r = 1.0 / sqrt(workgroup_reduce(lid, vec2<f32>(ss, 0.0), false).x / n + p.eps);
    let out = p.y_offset + row * p.cols;
    for (var j = lid; j < p.cols; j += WG) {
        y[out + j] = (x[base + j] - mu) * r * w[p.w_offset + j] + b[p.b_offset + j];
    }
    if lid == 0u {
        mean[p.mean_offset + row] = mu;
        rstd[p.rstd_offset + row] = r;
    }
}

// Here `y` is dx, and `mean`, `rstd` are read only.
@compute @workgroup_size(WG)
fn layernorm_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * p.groups_x + wg.x;
    if row >= p.rows {
        return;
    }
    let base = p.x_offset + row * p.cols;
    let g = p.dy_offset + row * p.cols;
    let mu = mean[p.mean_offset + row];
    let r = rstd[p.rstd_offset + row];
    var s = vec2<f32>(0.0);
    for (var j = lid; j < p.cols; j += WG) {
        let dxhat = dy[g + j] * w[p.w_offset + j];
        s += vec2<f32>(dxhat, dxhat * (x[base + j] - mu) * r);
    }
    let means = workgroup_reduce(lid, s, false) / f32(p.cols);
    let out = p.dx_offset + row * p.cols;
    for (var j = lid; j < p.cols; j += WG) {
        let xhat = (x[base + j] - mu) * r;
        y[out + j] = r * (dy[g + j] * w[p.w_offset + j] - means.x - xhat * means.y);
    }
}
