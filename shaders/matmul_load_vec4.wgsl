// Tile loader with four elements a load. Chosen only when each operand's contiguous
// dimension, offset and batch stride are multiples of 4, so that four elements are either
// wholly inside the matrix or wholly outside it. A slot is four elements of a slice: BM·BK/4
// of op(A), BK·BN/4 of op(B).
//
// The bindings a and b (arrays of Staged: vec4<f32>; vec4<f16>, or the two words of four
// bf16, which halve the bytes and the staging registers) and widen(Staged) -> vec4<f32> are
// generated per dtype by src/backend/gpu/ops/matmul.rs.
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
        return Staged();
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
        return Staged();
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
    let w = widen(v);
    if TRANS_A {
        a_tile[(s.x * BM + s.y) / 4u] = w;
    } else {
        for (var t = 0u; t < 4u; t++) {
            put_a(s.x + t, s.y, w[t]);
        }
    }
}

fn stash_b(i: u32, v: Staged) {
    if i >= B_SLOTS {
        return;
    }
    let s = b_slot(i);
    let w = widen(v);
    if TRANS_B {
        for (var t = 0u; t < 4u; t++) {
            put_b(s.x + t, s.y, w[t]);
        }
    } else {
        b_tile[(s.x * BN + s.y) / 4u] = w;
    }
}
