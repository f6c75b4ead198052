// Fused multi-head self-attention, streaming (FlashAttention-2 style: no T×T matrix in
// memory), forward and backward. philox.wgsl is concatenated in front (dropout).
//
// qkv [batch, t, 3·dm] packs q | k | v; head h owns columns h·d .. h·d + d of each part
// (dm = heads·d). key_mask [batch, t]: 1.0 = real frame. out [batch, t, dm]. lse, delta
// [batch, heads, t]. qkv, out, dout and dqkv are in the storage dtype (f32, f16 or bf16);
// key_mask, lse and delta in f32; all arithmetic and the tiles in f32. Scores are (q·k)/√d
// over real keys; dropout (probability p) multiplies the softmax probability of (query, key)
// by keep_scale or 0, by element ((b·heads + h)·t + query)·t + key of the mask.
//   attention_fwd:   one invocation per query row, BQ per workgroup; keys and values stream
//                    through workgroup memory in tiles of BK; online softmax. Saves
//                    lse = max + log Σ exp (NO_KEYS when no key is real: the output is then 0).
//   attention_delta: delta = rowsum(dO ∘ O), one invocation per (b, h, query).
//   attention_dq:    one invocation per query: dq = Σ_s dS·k_s/√d, dS = P·(Z·dO·v_s − delta).
//   attention_dkv:   one invocation per key: dv = Σ_t P·Z·dO_t, dk = Σ_t dS·q_t/√d, queries
//                    streaming through workgroup memory.
// Every sum runs in a fixed order (no atomics): the same bits on every run. Each output is
// rounded to its storage dtype once, when stored (dq, dk and dv stay in registers).
//
// The operands and their access functions (qkv_ld, out_st2, ...) are generated per storage
// dtype by src/backend/gpu/operand.rs, with PAIRS: whether 16-bit rows are read and written a
// 32-bit word (two elements) at a time. That takes an even head size (16-bit views start on an
// even element, so every row then starts on a word); an odd one goes element by element.
//
// HEAD_DIM (16, 32, 64 or 128: the head size rounded up; the extra dimensions are zeros), HD4
// (HEAD_DIM / 4), BQ (queries per workgroup), BK (rows per tile, at most BQ), FWD_KEYS and
// DQ_KEYS (keys of a tile attention_fwd and attention_dq take at once, dividing BK) are
// generated per variant by src/backend/gpu/ops/attention.rs. An invocation's own rows (q, the
// accumulators, ...) are HD4 named vec4s, never an array: a line holding `$j` is repeated for
// j = 0 .. HD4 − 1 by the generator, one holding `$f` for f = 0 .. FWD_KEYS − 1, one holding
// `$q` for q = 0 .. DQ_KEYS − 1. A private array indexed by anything but a constant lives in
// local memory on NVIDIA's driver, not in registers, and runs a small fraction of the card's
// f32 rate (BENCHMARKS.md). Keys taken at once are independent dot products in flight, and
// the forward rescales its accumulators once per FWD_KEYS keys instead of once per key; but
// each costs registers, and attention_dkv, which holds four head rows (k, v, dk, dv), is
// fastest one query at a time (BENCHMARKS.md has the measurements).

//!CONSTS

// NO_KEYS, the log-sum-exp of a row with no real key (src/backend/mod.rs, NO_KEYS_LSE), comes
// with the generated constants; exp(score − it) is 0, never NaN.

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/attention.rs.
@group(0) @binding(0) var<uniform> p: Params;
//!OPERANDS

// Tiles of BK rows of two operands (k and v, or q and dO), as vec4s, and per-row values of the
// tile.
var<workgroup> tile_a: array<vec4<f32>, BK * HD4>;
var<workgroup> tile_b: array<vec4<f32>, BK * HD4>;
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

// Whether rows go a word at a time (see PAIRS): the same for every invocation.
fn by_pairs() -> bool {
    return PAIRS && (p.d & 1u) == 0u;
}

// Element `at` of qkv or dout (3 = dout), or 0 where `real` is false.
fn element_or_zero(part: u32, at: u32, real: bool) -> f32 {
    if !real {
        return 0.0;
    }
    if part == 3u {
        return dout_ld(at);
    }
    return qkv_ld(at);
}

// Elements at, at + 1 (at even) of qkv or dout, as element_or_zero.
fn pair_or_zero(part: u32, at: u32, real: bool) -> vec2<f32> {
    if !real {
        return vec2<f32>(0.0);
    }
    if part == 3u {
        return dout_ld2(at);
    }
    return qkv_ld2(at);
}

// Elements 4j .. 4j + 3 of head h's part (0 = q, 1 = k, 2 = v; 3 = dout) of frame s of clip b:
// 0 past the head size and for a frame or clip that does not exist.
fn row4(b: u32, s: u32, part: u32, h: u32, j: u32) -> vec4<f32> {
    let i = 4u * j;
    let real = b < p.batch && s < p.t;
    var at = 0u;
    if real {
        at = select(qkv_index(b, s, part, h, i), p.dout_offset + head_index(b, s, h, i), part == 3u);
    }
    if by_pairs() {
        // With d even, i + 1 < d whenever i < d.
        return vec4<f32>(
            pair_or_zero(part, at, real && i < p.d),
            pair_or_zero(part, at + 2u, real && i + 2u < p.d),
        );
    }
    return vec4<f32>(
        element_or_zero(part, at, real && i < p.d),
        element_or_zero(part, at + 1u, real && i + 1u < p.d),
        element_or_zero(part, at + 2u, real && i + 2u < p.d),
        element_or_zero(part, at + 3u, real && i + 3u < p.d),
    );
}

// Writes the first d elements of a row four at a time: elements 4j .. of out at `at`. The
// invocation owns the whole row, so with pairs it stores whole words.
fn put_out4(at: u32, j: u32, v: vec4<f32>) {
    let i = 4u * j;
    if by_pairs() {
        if i < p.d {
            out_st2(at + i, v.xy);
        }
        if i + 2u < p.d {
            out_st2(at + i + 2u, v.zw);
        }
        return;
    }
    for (var c = 0u; c < 4u; c++) {
        if i + c < p.d {
            out_st(at + i + c, v[c]);
        }
    }
}

fn put_dqkv4(at: u32, j: u32, v: vec4<f32>) {
    let i = 4u * j;
    if by_pairs() {
        if i < p.d {
            dqkv_st2(at + i, v.xy);
        }
        if i + 2u < p.d {
            dqkv_st2(at + i + 2u, v.zw);
        }
        return;
    }
    for (var c = 0u; c < 4u; c++) {
        if i + c < p.d {
            dqkv_st(at + i + c, v[c]);
        }
    }
}

fn real_key(b: u32, s: u32) -> bool {
    return s < p.t && key_mask_ld(p.mask_offset + b * p.t + s) != 0.0;
}

// The dropout factor of (query, key): keep_scale or 0 (1 without dropout).
fn dropout_factor(b: u32, h: u32, query: u32, key: u32) -> f32 {
    if p.p == 0.0 {
        return 1.0;
    }
    let element = stat_index(b, h, query) * p.t + key;
    return select(0.0, p.keep_scale, dropout_uniform(p.seed, p.step, p.site, element) >= p.p);
}

// Loads rows s0 .. s0+BK of two parts (see row4) into the tiles.
fn load_tiles(b: u32, h: u32, s0: u32, part_a: u32, part_b: u32, lid: u32) {
    for (var idx = lid; idx < BK * HD4; idx += BQ) {
        let r = idx / HD4;
        let j = idx % HD4;
        tile_a[idx] = row4(b, s0 + r, part_a, h, j);
        tile_b[idx] = row4(b, s0 + r, part_b, h, j);
    }
}

@compute @workgroup_size(BQ)
fn attention_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = owned_row(wg, lid);
    let q$j = row4(row.b, row.s, 0u, row.h, $j) * p.scale;
    var acc$j = vec4<f32>(0.0);
    var m = -NO_KEYS;
    var l = 0.0;
    for (var s0 = 0u; s0 < p.t; s0 += BK) {
        load_tiles(row.b, row.h, s0, 1u, 2u, lid);
        if lid < BK {
            tile_x[lid] = select(0.0, 1.0, row.b < p.batch && real_key(row.b, s0 + lid));
        }
        workgroupBarrier();
        if row.valid {
            for (var r = 0u; r < BK; r += FWD_KEYS) {
                let real$f = tile_x[r + $f] != 0.0;
                var score$f = 0.0;
                score$f += dot(q$j, tile_a[(r + $f) * HD4 + $j]);
                var m_new = m;
                m_new = select(m_new, max(m_new, score$f), real$f);
                let rescale = exp(m - m_new);
                let prob$f = select(0.0, exp(score$f - m_new), real$f);
                l *= rescale;
                l += prob$f;
                let weight$f = prob$f * dropout_factor(row.b, row.h, row.s, s0 + r + $f);
                acc$j *= rescale;
                acc$j += weight$f * tile_b[(r + $f) * HD4 + $j];
                m = m_new;
            }
        }
        workgroupBarrier();
    }
    if row.valid {
        let inv = select(0.0, 1.0 / l, l > 0.0);
        let at = p.out_offset + head_index(row.b, row.s, row.h, 0u);
        put_out4(at, $j, acc$j * inv);
        let row_lse = select(NO_KEYS, m + log(l), l > 0.0);
        lse_st(p.lse_offset + stat_index(row.b, row.h, row.s), row_lse);
    }
}

@compute @workgroup_size(BQ)
fn attention_delta(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = owned_row(wg, lid);
    if !row.valid {
        return;
    }
    var sum = 0.0;
    if by_pairs() {
        for (var i = 0u; i < p.d; i += 2u) {
            let at = head_index(row.b, row.s, row.h, i);
            let terms = dout_ld2(p.dout_offset + at) * out_ld2(p.out_offset + at);
            sum += terms.x;
            sum += terms.y;
        }
    } else {
        for (var i = 0u; i < p.d; i++) {
            let at = head_index(row.b, row.s, row.h, i);
            sum += dout_ld(p.dout_offset + at) * out_ld(p.out_offset + at);
        }
    }
    delta_st(stat_index(row.b, row.h, row.s), sum);
}

@compute @workgroup_size(BQ)
fn attention_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = owned_row(wg, lid);
    let q$j = row4(row.b, row.s, 0u, row.h, $j) * p.scale;
    let d_o$j = row4(row.b, row.s, 3u, row.h, $j);
    var dq$j = vec4<f32>(0.0);
    var row_lse = NO_KEYS;
    var row_delta = 0.0;
    if row.valid {
        row_lse = lse_ld(p.lse_offset + stat_index(row.b, row.h, row.s));
        row_delta = delta_ld(stat_index(row.b, row.h, row.s));
    }
    for (var s0 = 0u; s0 < p.t; s0 += BK) {
        load_tiles(row.b, row.h, s0, 1u, 2u, lid);
        if lid < BK {
            tile_x[lid] = select(0.0, 1.0, row.b < p.batch && real_key(row.b, s0 + lid));
        }
        workgroupBarrier();
        if row.valid && row_lse != NO_KEYS {
            for (var r = 0u; r < BK; r += DQ_KEYS) {
                let real$q = tile_x[r + $q] != 0.0;
                var score$q = 0.0;
                var dp$q = 0.0;
                score$q += dot(q$j, tile_a[(r + $q) * HD4 + $j]);
                dp$q += dot(d_o$j, tile_b[(r + $q) * HD4 + $j]);
                let prob$q = select(0.0, exp(score$q - row_lse), real$q);
                let z$q = dropout_factor(row.b, row.h, row.s, s0 + r + $q);
                let ds$q = prob$q * (dp$q * z$q - row_delta);
                dq$j += ds$q * tile_a[(r + $q) * HD4 + $j];
            }
        }
        workgroupBarrier();
    }
    if row.valid {
        let at = p.dqkv_offset + qkv_index(row.b, row.s, 0u, row.h, 0u) - p.qkv_offset;
        put_dqkv4(at, $j, dq$j * p.scale);
    }
}

@compute @workgroup_size(BQ)
fn attention_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = owned_row(wg, lid);
    let key_is_real = row.valid && real_key(row.b, row.s);
    let k$j = row4(row.b, row.s, 1u, row.h, $j) * p.scale;
    let v$j = row4(row.b, row.s, 2u, row.h, $j);
    var dk$j = vec4<f32>(0.0);
    var dv$j = vec4<f32>(0.0);
    for (var t0 = 0u; t0 < p.t; t0 += BK) {
        // Queries t0 .. t0+BK: q and dO rows, and their lse and delta.
        load_tiles(row.b, row.h, t0, 0u, 3u, lid);
        if lid < BK {
            let t = t0 + lid;
            var l = NO_KEYS;
            var dl = 0.0;
            if row.b < p.batch && t < p.t {
                l = lse_ld(p.lse_offset + stat_index(row.b, row.h, t));
                dl = delta_ld(stat_index(row.b, row.h, t));
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
                let at = r * HD4;
                var score = 0.0;
                var dp = 0.0;
                score += dot(k$j, tile_a[at + $j]);
                dp += dot(v$j, tile_b[at + $j]);
                let prob = exp(score - tile_x[r]);
                let z = dropout_factor(row.b, row.h, t0 + r, row.s);
                let ds = prob * (dp * z - tile_y[r]);
                let pz = prob * z;
                dv$j += pz * tile_b[at + $j];
                dk$j += ds * tile_a[at + $j];
            }
        }
        workgroupBarrier();
    }
    if row.valid {
        let at = p.dqkv_offset + qkv_index(row.b, row.s, 1u, row.h, 0u) - p.qkv_offset;
        put_dqkv4(at, $j, dk$j * p.scale);
        put_dqkv4(at + p.heads * p.d, $j, dv$j);
    }
}
