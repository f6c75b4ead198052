// Tile loader with vec4 loads. Chosen only when each operand's contiguous dimension, offset
// and batch stride are multiples of 4, so a vec4 is either wholly inside the matrix or wholly
// outside it. A slot is one vec4 of a slice: BM·BK/4 of op(A), BK·BN/4 of op(B).
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;

alias Staged = vec4<f32>;
const A_SLOTS: u32 = BM * BK / 4u;
const B_SLOTS: u32 = BK * BN / 4u;

// (k, m) of A-slot i within the slice: four consecutive m of one k when A is stored [K, M],
// four consecutive k of one m when stored [M, K] (consecutive slots are consecutive in
// storage either way).
fn a_slot(i: u32) -> vec2<u32> {
    if TRANS_A {
        return vec2<u32>(i / (BM / 4u), (i % (BM / 4u)) * 4u);
    }
    return vec2<u32>((i % (BK / 4u)) * 4u, i / (BK / 4u));
}

// (k, n) of B-slot i: four consecutive k of one n when B is stored [N, K], four consecutive
// n of one k when stored [K, N].
fn b_slot(i: u32) -> vec2<u32> {
    if TRANS_B {
        return vec2<u32>((i % (BK / 4u)) * 4u, i / (BK / 4u));
    }
    return vec2<u32>(i / (BN / 4u), (i % (BN / 4u)) * 4u);
}

fn fetch_a(i: u32, m0: u32, k0: u32, k_end: u32, a_base: u32) -> Staged {
    let s = a_slot(i);
    let gk = k0 + s.x;
    let gm = m0 + s.y;
    if i >= A_SLOTS || gk >= k_end || gm >= p.m {
        return Staged(0.0);
    }
    if TRANS_A {
        return a[(a_base + gk * p.m + gm) / 4u];
    }
    return a[(a_base + gm * p.k + gk) / 4u];
}

fn fetch_b(i: u32, n0: u32, k0: u32, k_end: u32, b_base: u32) -> Staged {
    let s = b_slot(i);
    let gk = k0 + s.x;
    let gn = n0 + s.y;
    if i >= B_SLOTS || gk >= k_end || gn >= p.n {
        return Staged(0.0);
    }
    if TRANS_B {
        return b[(b_base + gn * p.k + gk) / 4u];
    }
    return b[(b_base + gk * p.n + gn) / 4u];
}

fn stash_a(i: u32, v: Staged) {
    if i >= A_SLOTS {
        return;
    }
    let s = a_slot(i);
    if TRANS_A {
        a_tile[(s.x * BM + s.y) / 4u] = v;
    } else {
        for (var t = 0u; t < 4u; t++) {
            put_a(s.x + t, s.y, v[t]);
        }
    }
}

fn stash_b(i: u32, v: Staged) {
    if i >= B_SLOTS {
        return;
    }
    let s = b_slot(i);
    if TRANS_B {
        for (var t = 0u; t < 4u; t++) {
            put_b(s.x + t, s.y, v[t]);
        }
    } else {
        b_tile[(s.x * BN + s.y) / 4u] = v;
    }
}
