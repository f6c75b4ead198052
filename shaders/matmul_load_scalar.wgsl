// Tile loader for any sizes and offsets: one element per load.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

fn load_tiles(tid: u32, m0: u32, n0: u32, k0: u32, k_end: u32, a_base: u32, b_base: u32) {
    // Consecutive threads read consecutive addresses in A's storage order.
    for (var i = tid; i < BM * BK; i += THREADS) {
        var mm: u32;
        var kk: u32;
        if TRANS_A {
            kk = i / BM;
            mm = i % BM;
        } else {
            mm = i / BK;
            kk = i % BK;
        }
        let gm = m0 + mm;
        let gk = k0 + kk;
        var v = 0.0;
        if gm < p.m && gk < k_end {
            if TRANS_A {
                v = a[a_base + gk * p.m + gm];
            } else {
                v = a[a_base + gm * p.k + gk];
            }
        }
        put_a(kk, mm, v);
    }
    for (var i = tid; i < BK * BN; i += THREADS) {
        var kk: u32;
        var nn: u32;
        if TRANS_B {
            nn = i / BK;
            kk = i % BK;
        } else {
            kk = i / BN;
            nn = i % BN;
        }
        let gk = k0 + kk;
        let gn = n0 + nn;
        var v = 0.0;
        if gk < k_end && gn < p.n {
            if TRANS_B {
                v = b[b_base + gn * p.k + gk];
            } else {
                v = b[b_base + gk * p.n + gn];
            }
        }
        put_b(kk, nn, v);
    }
}
