// Column sums over the rows of dy [rows, cols], in a fixed order (no atomics), in two passes:
//   bias_partials:      partials[blk, j] = Σ dy[i, j] over the ROW_BLOCK rows i of block blk
//   layernorm_partials: partials[blk, j] = Σ dy[i, j]·xhat[i, j], partials[blk, cols + j] =
//                       Σ dy[i, j] (the dw and db of layer norm, side by side)
//   finish_columns:     out[j] = Σ_blk partials[blk, first + j], blocks in order
// One invocation per (block, column) or per column; the grid is folded in two dimensions.
// Every binding is read_write, so that inputs and outputs may share a buffer (an arena).

override WG: u32 = 256u;
override ROW_BLOCK: u32 = 64u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/column_sums.rs.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

fn invocation(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * p.groups_x + wg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn bias_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = invocation(wg, lid);
    if t >= p.blocks * p.cols {
        return;
    }
    let blk = t / p.cols;
    let j = t % p.cols;
    let end = min(p.rows, (blk + 1u) * ROW_BLOCK);
    var s = 0.0;
    for (var i = blk * ROW_BLOCK; i < end; i++) {
        s += dy[p.dy_offset + i * p.cols + j];
    }
    partials[blk * p.width + j] = s;
}

@compute @workgroup_size(WG)
fn layernorm_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = invocation(wg, lid);
    if t >= p.blocks * p.cols {
        return;
    }
    let blk = t / p.cols;
    let j = t % p.cols;
    let end = min(p.rows, (blk + 1u) * ROW_BLOCK);
    var s = vec2<f32>(0.0);
    for (var i = blk * ROW_BLOCK; i < end; i++) {
        let g = dy[p.dy_offset + i * p.cols + j];
        let xhat = (x[p.x_offset + i * p.cols + j] - mean[p.mean_offset + i]) * rstd[p.rstd_offset + i];
        s += vec2<f32>(g * xhat, g);
    }
    partials[blk * p.width + j] = s.x;
    partials[blk * p.width + p.cols + j] = s.y;
}

@compute @workgroup_size(WG)
fn finish_columns(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = invocation(wg, lid);
    if j >= p.count {
        return;
    }
    var s = 0.0;
    for (var blk = 0u; blk < p.blocks; blk++) {
        s += partials[blk * p.width + p.first + j];
    }
    out[p.out_offset + j] = s;
}
