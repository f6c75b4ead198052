// Tile loader with vec4 loads. Chosen only when each operand's contiguous dimension, offset
// and batch stride are multiples of 4, so a vec4 is either wholly inside the matrix or wholly
// outside it.
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;

fn load_tiles(tid: u32, m0: u32, n0: u32, k0: u32, k_end: u32, a_base: u32, b_base: u32) {
    for (var i = tid; i < BM * BK / 4u; i += THREADS) {
        if TRANS_A {
            // Stored [K, M]: four consecutive m of one k, stored as they are.
            let kk = i / (BM / 4u);
            let mm = (i % (BM / 4u)) * 4u;
            let gk = k0 + kk;
            let gm = m0 + mm;
            var v = vec4<f32>(0.0);
            if gk < k_end && gm < p.m {
                v = a[(a_base + gk * p.m + gm) / 4u];
            }
            a_tile[(kk * BM + mm) / 4u] = v;
        } else {
            // Stored [M, K]: four consecutive k of one m, scattered to four k rows.
            let mm = i / (BK / 4u);
            let kk = (i % (BK / 4u)) * 4u;
            let gm = m0 + mm;
            let gk = k0 + kk;
            var v = vec4<f32>(0.0);
            if gm < p.m && gk < k_end {
                v = a[(a_base + gm * p.k + gk) / 4u];
            }
            for (var t = 0u; t < 4u; t++) {
                put_a(kk + t, mm, v[t]);
            }
        }
    }
    for (var i = tid; i < BK * BN / 4u; i += THREADS) {
        if TRANS_B {
            // Stored [N, K]: four consecutive k of one n, scattered to four k rows.
            let nn = i / (BK / 4u);
            let kk = (i % (BK / 4u)) * 4u;
            let gn = n0 + nn;
            let gk = k0 + kk;
            var v = vec4<f32>(0.0);
            if gn < p.n && gk < k_end {
                v = b[(b_base + gn * p.k + gk) / 4u];
            }
            for (var t = 0u; t < 4u; t++) {
                put_b(kk + t, nn, v[t]);
            }
        } else {
            // Stored [K, N]: four consecutive n of one k, stored as they are.
            let kk = i / (BN / 4u);
            let nn = (i % (BN / 4u)) * 4u;
            let gk = k0 + kk;
            let gn = n0 + nn;
            var v = vec4<f32>(0.0);
            if gk < k_end && gn < p.n {
                v = b[(b_base + gk * p.n + gn) / 4u];
            }
            b_tile[(kk * BN + nn) / 4u] = v;
        }
    }
}
