// Fused multi-head self-attention, streaming (FlashAttention-2 style: no T×T matrix in
// memory), forward and backward. philox.wgsl is concatenated in front (dropout).
//
// qkv [batch, t, 3·dm] packs q | k | v; head h owns columns h·d .. h·d + d of each part
// (dm = heads·d). key_mask [batch, t]: 1.0 = real frame. out [batch, t, dm]. lse, delta
// [batch, heads, t]. Scores are (q·k)/√d over real keys; dropout (probability p) multiplies
// the softmax probability of (query, key) by keep_scale or 0, by element
// ((b·heads + h)·t + query)·t + key of the mask.
//   attention_fwd:   one invocation per query row, BQ per workgroup; keys and values stream
//                    through workgroup memory in tiles of BK; online softmax. Saves
//                    lse = max + log Σ exp (NO_KEYS when no key is real: the output is then 0).
//   attention_delta: delta = rowsum(dO ∘ O), one invocation per (b, h, query).
//   attention_dq:    one invocation per query: dq = Σ_s dS·k_s/√d, dS = P·(Z·dO·v_s − delta).
//   attention_dkv:   one invocation per key: dv = Σ_t P·Z·dO_t, dk = Σ_t dS·q_t/√d, queries
//                    streaming through workgroup memory.
// Every sum runs in a fixed order (no atomics): the same bits on every run.
//
// HEAD_DIM (16, 32, 64 or 128: the head size rounded up; the extra dimensions are zeros), BQ
// (queries per workgroup) and BK (rows per tile, at most BQ) are generated per variant by src/backend/gpu/shaders.rs: per-thread arrays need const
// sizes. Bindings are read_write so that operands may share an arena.

//!CONSTS

// NO_KEYS, the log-sum-exp of a row with no real key (src/backend/mod.rs, NO_KEYS_LSE), comes
// with the generated constants; exp(score − it) is 0, never NaN.

struct Params {
    batch: u32,
    t: u32,
    heads: u32,
    d: u32,
    groups_x: u32,
    scale: f32,
    p: f32,
    keep_scale: f32,
    seed: vec2<u32>,
    step: vec2<u32>,
    site: u32,
    qkv_offset: u32,
    mask_offset: u32,
    out_offset: u32,
    lse_offset: u32,
    dout_offset: u32,
    dqkv_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> key_mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> dout: array<f32>;
@group(0) @binding(6) var<storage, read_write> delta: array<f32>;
@group(0) @binding(7) var<storage, read_write> dqkv: array<f32>;

// Tiles of BK rows of two operands (k and v, or q and dO), and per-row values of the tile.
var<workgroup> tile_a: array<f32, BK * HEAD_DIM>;
var<workgroup> tile_b: array<f32, BK * HEAD_DIM>;
var<workgroup> tile_x: array<f32, BK>;
var<workgroup> tile_y: array<f32, BK>;

struct Row {
    b: u32,
    h: u32,
    // The query (or key) this invocation owns, and whether it exists.
    s: u32,
    valid: bool,
}

// Workgroup w covers rows qb·BQ .. of head h of clip b.
fn owned_row(wg: vec3<u32>, lid: u32) -> Row {
    let w = wg.y * p.groups_x + wg.x;
    let blocks = (p.t + BQ - 1u) / BQ;
    let b = w / (p.heads * blocks);
    let h = (w / blocks) % p.heads;
    let s = (w % blocks) * BQ + lid;
    return Row(b, h, s, b < p.batch && s < p.t);
}

// Element i of head h's part (0 = q, 1 = k, 2 = v) of frame s of clip b, in qkv.
fn qkv_index(b: u32, s: u32, part: u32, h: u32, i: u32) -> u32 {
    let dm = p.heads * p.d;
    return p.qkv_offset + (b * p.t + s) * 3u * dm + part * dm + h * p.d + i;
}

// Element i of head h of frame s of clip b in out / dout layout ([batch, t, dm]).
fn head_index(b: u32, s: u32, h: u32, i: u32) -> u32 {
    return (b * p.t + s) * p.heads * p.d + h * p.d + i;
}

fn stat_index(b: u32, h: u32, s: u32) -> u32 {
    return (b * p.heads + h) * p.t + s;
}

fn real_key(b: u32, s: u32) -> bool {
    return s < p.t && key_mask[p.mask_offset + b * p.t + s] != 0.0;
}

// The dropout factor of (query, key): keep_scale or 0 (1 without dropout).
fn dropout_factor(b: u32, h: u32, query: u32, key: u32) -> f32 {
    if p.p == 0.0 {
        return 1.0;
    }
    let element = stat_index(b, h, query) * p.t + key;
    return select(0.0, p.keep_scale, dropout_uniform(p.seed, p.step, p.site, element) >= p.p);
}

// Loads rows s0 .. s0+BK of two qkv parts (or of dout when a part is 3) into the tiles.
fn load_tiles(b: u32, h: u32, s0: u32, part_a: u32, part_b: u32, lid: u32) {
    for (var idx = lid; idx < BK * HEAD_DIM; idx += BQ) {
        let r = idx / HEAD_DIM;
        let i = idx % HEAD_DIM;
        let s = s0 + r;
        var a = 0.0;
        var c = 0.0;
        if b < p.batch && s < p.t && i < p.d {
            a = qkv[qkv_index(b, s, part_a, h, i)];
            if part_b == 3u {
                c = dout[p.dout_offset + head_index(b, s, h, i)];
            } else {
                c = qkv[qkv_index(b, s, part_b, h, i)];
            }
        }
        tile_a[idx] = a;
        tile_b[idx] = c;
    }
}

@compute @workgroup_size(BQ)
fn attention_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = owned_row(wg, lid);
    var q: array<f32, HEAD_DIM>;
    var acc: array<f32, HEAD_DIM>;
    if row.valid {
        for (var i = 0u; i < p.d; i++) {
            q[i] = qkv[qkv_index(row.b, row.s, 0u, row.h, i)] * p.scale;
        }
    }
    var m = -NO_KEYS;
    var l = 0.0;
    for (var s0 = 0u; s0 < p.t; s0 += BK) {
        load_tiles(row.b, row.h, s0, 1u, 2u, lid);
        if lid < BK {
            tile_x[lid] = select(0.0, 1.0, row.b < p.batch && real_key(row.b, s0 + lid));
        }
        workgroupBarrier();
        if row.valid {
            for (var r = 0u; r < BK; r++) {
                if tile_x[r] == 0.0 {
                    continue;
                }
                var score = 0.0;
                for (var i = 0u; i < HEAD_DIM; i++) {
                    score += q[i] * tile_a[r * HEAD_DIM + i];
                }
                let m_new = max(m, score);
                let rescale = exp(m - m_new);
                let prob = exp(score - m_new);
                l = l * rescale + prob;
                let weight = prob * dropout_factor(row.b, row.h, row.s, s0 + r);
                for (var i = 0u; i < HEAD_DIM; i++) {
                    acc[i] = acc[i] * rescale + weight * tile_b[r * HEAD_DIM + i];
                }
                m = m_new;
            }
        }
        workgroupBarrier();
    }
    if row.valid {
        let inv = select(0.0, 1.0 / l, l > 0.0);
        for (var i = 0u; i < p.d; i++) {
            out[p.out_offset + head_index(row.b, row.s, row.h, i)] = acc[i] * inv;
        }
        lse[p.lse_offset + stat_index(row.b, row.h, row.s)] = select(NO_KEYS, m + log(l), l > 0.0);
    }
}

@compute @workgroup_size(BQ)
fn attention_delta(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = owned_row(wg, lid);
    if !row.valid {
        return;
    }
    var sum = 0.0;
    for (var i = 0u; i < p.d; i++) {
        let at = head_index(row.b, row.s, row.h, i);
        sum += dout[p.dout_offset + at] * out[p.out_offset + at];
    }
    delta[stat_index(row.b, row.h, row.s)] = sum;
}

@compute @workgroup_size(BQ)
fn attention_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = owned_row(wg, lid);
    var q: array<f32, HEAD_DIM>;
    var d_o: array<f32, HEAD_DIM>;
    var dq: array<f32, HEAD_DIM>;
    var row_lse = NO_KEYS;
    var row_delta = 0.0;
    if row.valid {
        for (var i = 0u; i < p.d; i++) {
            q[i] = qkv[qkv_index(row.b, row.s, 0u, row.h, i)] * p.scale;
            d_o[i] = dout[p.dout_offset + head_index(row.b, row.s, row.h, i)];
        }
        row_lse = lse[p.lse_offset + stat_index(row.b, row.h, row.s)];
        row_delta = delta[stat_index(row.b, row.h, row.s)];
    }
    for (var s0 = 0u; s0 < p.t; s0 += BK) {
        load_tiles(row.b, row.h, s0, 1u, 2u, lid);
        if lid < BK {
            tile_x[lid] = select(0.0, 1.0, row.b < p.batch && real_key(row.b, s0 + lid));
        }
        workgroupBarrier();
        if row.valid && row_lse != NO_KEYS {
            for (var r = 0u; r < BK; r++) {
                if tile_x[r] == 0.0 {
                    continue;
                }
                var score = 0.0;
                var dp = 0.0;
                for (var i = 0u; i < HEAD_DIM; i++) {
                    score += q[i] * tile_a[r * HEAD_DIM + i];
                    dp += d_o[i] * tile_b[r * HEAD_DIM + i];
                }
                let prob = exp(score - row_lse);
                let ds = prob * (dp * dropout_factor(row.b, row.h, row.s, s0 + r) - row_delta);
                for (var i = 0u; i < HEAD_DIM; i++) {
                    dq[i] += ds * tile_a[r * HEAD_DIM + i];
                }
            }
        }
        workgroupBarrier();
    }
    if row.valid {
        for (var i = 0u; i < p.d; i++) {
            dqkv[p.dqkv_offset + qkv_index(row.b, row.s, 0u, row.h, i) - p.qkv_offset] = dq[i] * p.scale;
        }
    }
}

@compute @workgroup_size(BQ)
fn attention_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = owned_row(wg, lid);
    var k: array<f32, HEAD_DIM>;
    var v: array<f32, HEAD_DIM>;
    var dk: array<f32, HEAD_DIM>;
    var dv: array<f32, HEAD_DIM>;
    let key_is_real = row.valid && real_key(row.b, row.s);
    if key_is_real {
        for (var i = 0u; i < p.d; i++) {
            k[i] = qkv[qkv_index(row.b, row.s, 1u, row.h, i)] * p.scale;
            v[i] = qkv[qkv_index(row.b, row.s, 2u, row.h, i)];
        }
    }
    for (var t0 = 0u; t0 < p.t; t0 += BK) {
        // Queries t0 .. t0+BK: q and dO rows, and their lse and delta.
        load_tiles(row.b, row.h, t0, 0u, 3u, lid);
        if lid < BK {
            let t = t0 + lid;
            var l = NO_KEYS;
            var dl = 0.0;
            if row.b < p.batch && t < p.t {
                l = lse[p.lse_offset + stat_index(row.b, row.h, t)];
                dl = delta[stat_index(row.b, row.h, t)];
            }
            tile_x[lid] = l;
            tile_y[lid] = dl;
        }
        workgroupBarrier();
        if key_is_real {
            for (var r = 0u; r < BK; r++) {
                if tile_x[r] == NO_KEYS {
                    continue;
                }
                var score = 0.0;
                var dp = 0.0;
                for (var i = 0u; i < HEAD_DIM; i++) {
                    score += k[i] * tile_a[r * HEAD_DIM + i];
                    dp += v[i] * tile_b[r * HEAD_DIM + i];
                }
                let prob = exp(score - tile_x[r]);
                let z = dropout_factor(row.b, row.h, t0 + r, row.s);
                let ds = prob * (dp * z - tile_y[r]);
                for (var i = 0u; i < HEAD_DIM; i++) {
                    dv[i] += prob * z * tile_b[r * HEAD_DIM + i];
                    dk[i] += ds * tile_a[r * HEAD_DIM + i];
                }
            }
        }
        workgroupBarrier();
    }
    if row.valid {
        for (var i = 0u; i < p.d; i++) {
            let at = qkv_index(row.b, row.s, 1u, row.h, i) - p.qkv_offset;
            dqkv[p.dqkv_offset + at] = dk[i] * p.scale;
            dqkv[p.dqkv_offset + at + p.heads * p.d] = dv[i];
        }
    }
}
