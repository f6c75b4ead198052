// Cross-entropy over logits [batch, classes] with labels [batch] (class indices as f32),
// optional class weights [classes] and label smoothing ε, as torch's cross_entropy:
//   loss = Σ_i [(1−ε)·w[y_i]·(lse_i − z_iy) + ε/C·Σ_c w[c]·(lse_i − z_ic)] / Σ_i w[y_i]
//   dz_ij = scale·[(1−ε)·w[y_i]·(p_ij − [j = y_i]) + ε/C·(Σ_c w[c]·p_ij − w[j])] / Σ_i w[y_i]
// xent_rows:   one workgroup per row: lse, the row's loss numerator, weight and the label's rank
//              (classes ahead of it; ties go to the lower index, as argmax; at least C when a
//              logit of the row is NaN or infinite, so that such a row is never a hit) into
//              rows[i, 0..3]
// xent_finish: one invocation sums the rows in order: loss[0], hits[0] (top-1), hits[1]
//              (top-min(5, C))
// xent_bwd:    one workgroup per row: the gradient
// Workgroup sums use workgroup_reduce (workgroup_reduce.wgsl, concatenated in front). A label that is not a class
// index makes the loss NaN. Bindings are read_write so that operands may share an arena.

override WG: u32 = 256u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/cross_entropy.rs.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> labels: array<f32>;
@group(0) @binding(3) var<storage, read_write> weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> rows: array<f32>;
@group(0) @binding(6) var<storage, read_write> loss: array<f32>;
@group(0) @binding(7) var<storage, read_write> hits: array<f32>;
@group(0) @binding(8) var<storage, read_write> dlogits: array<f32>;

fn weight(c: u32) -> f32 {
    if p.has_weights != 0u {
        return weights[p.weights_offset + c];
    }
    return 1.0;
}

fn logit(i: u32, c: u32) -> f32 {
    return logits[p.logits_offset + i * p.classes + c];
}

// The label of row i as a class index, or classes when it is not one.
fn label(i: u32) -> u32 {
    let y = labels[p.labels_offset + i];
    if y >= 0.0 && y < f32(p.classes) && fract(y) == 0.0 {
        return u32(y);
    }
    return p.classes;
}

// NaN or ±infinity, by the bits (all exponent bits set): comparisons with NaN cannot tell.
fn non_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u;
}

fn row_lse(i: u32, lid: u32) -> f32 {
    var m = -3.4028235e38;
    for (var c = lid; c < p.classes; c += WG) {
        m = max(m, logit(i, c));
    }
    let row_max = workgroup_reduce(lid, vec2<f32>(m, 0.0), true).x;
    var s = 0.0;
    for (var c = lid; c < p.classes; c += WG) {
        s += exp(logit(i, c) - row_max);
    }
    return row_max + log(workgroup_reduce(lid, vec2<f32>(s, 0.0), false).x);
}

@compute @workgroup_size(WG)
fn xent_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = wg.y * p.groups_x + wg.x;
    if i >= p.batch {
        return;
    }
    let l = row_lse(i, lid);
    let y = label(i);
    let valid = y < p.classes;
    let zy = logit(i, min(y, p.classes - 1u));
    var acc = vec2<f32>(0.0);
    for (var c = lid; c < p.classes; c += WG) {
        let z = logit(i, c);
        let ahead = z > zy || (z == zy && c < y);
        let rank = select(0.0, 1.0, ahead) + select(0.0, f32(p.classes), non_finite(z));
        acc += vec2<f32>(weight(c) * (l - z), rank);
    }
    let sums = workgroup_reduce(lid, acc, false);
    if lid == 0u {
        let nan = bitcast<f32>(0x7fc00000u);
        let wy = select(nan, weight(min(y, p.classes - 1u)), valid);
        let numerator = (1.0 - p.smoothing) * wy * (l - zy) + p.smoothing / f32(p.classes) * sums.x;
        rows[3u * i] = select(nan, numerator, valid);
        rows[3u * i + 1u] = wy;
        rows[3u * i + 2u] = select(nan, sums.y, valid);
        lse[p.lse_offset + i] = l;
    }
}

@compute @workgroup_size(1)
fn xent_finish() {
    var total = 0.0;
    var weight_sum = 0.0;
    var top1 = 0.0;
    var topk = 0.0;
    let k = f32(min(p.classes, 5u));
    for (var i = 0u; i < p.batch; i++) {
        total += rows[3u * i];
        weight_sum += rows[3u * i + 1u];
        let rank = rows[3u * i + 2u];
        top1 += select(0.0, 1.0, rank < 1.0);
        topk += select(0.0, 1.0, rank < k);
    }
    loss[p.loss_offset] = total / weight_sum;
    hits[p.hits_offset] = top1;
    hits[p.hits_offset + 1u] = topk;
}

@compute @workgroup_size(WG)
fn xent_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = wg.y * p.groups_x + wg.x;
    if i >= p.batch {
        return;
    }
    // Σ_i w[y_i] and Σ_c w[c], by every workgroup alike.
    var s = vec2<f32>(0.0);
    for (var r = lid; r < p.batch; r += WG) {
        let y = label(r);
        s.x += select(bitcast<f32>(0x7fc00000u), weight(min(y, p.classes - 1u)), y < p.classes);
    }
    for (var c = lid; c < p.classes; c += WG) {
        s.y += weight(c);
    }
    let sums = workgroup_reduce(lid, s, false);
    let y = label(i);
    let wy = select(bitcast<f32>(0x7fc00000u), weight(min(y, p.classes - 1u)), y < p.classes);
    let l = lse[p.lse_offset + i];
    let spread = p.smoothing / f32(p.classes);
    for (var j = lid; j < p.classes; j += WG) {
        let prob = exp(logit(i, j) - l);
        let onehot = select(0.0, 1.0, j == y);
        let hard = (1.0 - p.smoothing) * wy * (prob - onehot);
        let soft = spread * (sums.y * prob - weight(j));
        dlogits[p.out_offset + i * p.classes + j] = p.scale * (hard + soft) / sums.x;
    }
}
