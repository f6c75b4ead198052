// Tile loader for any sizes and offsets: one element per load (a_ld, b_ld: the operands'
// generated access functions). A slot is one element of a slice: BM·BK of op(A), BK·BN of
// op(B).

alias Staged = f32;
const A_SLOTS: u32 = BM * BK;
const B_SLOTS: u32 = BK * BN;

// (k, m) of A-slot i within the slice; consecutive slots are consecutive in A's storage.
fn a_slot(i: u32) -> vec2<u32> {
    if TRANS_A {
        return vec2<u32>(i / BM, i % BM);
    }
    return vec2<u32>(i % BK, i / BK);
}

// (k, n) of B-slot i; consecutive slots are consecutive in B's storage.
fn b_slot(i: u32) -> vec2<u32> {
    if TRANS_B {
        return vec2<u32>(i % BK, i / BK);
    }
    return vec2<u32>(i / BN, i % BN);
}

fn fetch_a(i: u32, m0: u32, k0: u32, k_end: u32, a_base: u32) -> Staged {
    let s = a_slot(i);
    let gk = k0 + s.x;
    let gm = m0 + s.y;
    if i >= A_SLOTS || gk >= k_end || gm >= p.m {
        return 0.0;
    }
    if TRANS_A {
        return a_ld(a_base + gk * p.m + gm);
    }
    return a_ld(a_base + gm * p.k + gk);
}

fn fetch_b(i: u32, n0: u32, k0: u32, k_end: u32, b_base: u32) -> Staged {
    let s = b_slot(i);
    let gk = k0 + s.x;
    let gn = n0 + s.y;
    if i >= B_SLOTS || gk >= k_end || gn >= p.n {
        return 0.0;
    }
    if TRANS_B {
        return b_ld(b_base + gn * p.k + gk);
    }
    return b_ld(b_base + gk * p.n + gn);
}

fn stash_a(i: u32, v: Staged) {
    if i < A_SLOTS {
        let s = a_slot(i);
        put_a(s.x, s.y, v);
    }
}

fn stash_b(i: u32, v: Staged) {
    if i < B_SLOTS {
        let s = b_slot(i);
        put_b(s.x, s.y, v);
    }
}
