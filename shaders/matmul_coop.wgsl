// Matrix product on cooperative matrices (tensor cores): C[M,N] = op(A)·op(B) (+ bias[N])
// for each batch item, A and B f16, accumulated in f32, C stored in f16 or f32.
//
// Layout as matmul.wgsl: row-major; A is [M,K] ([K,M] when TRANS_A), B is [K,N] ([N,K] when
// TRANS_B), C is [M,N]. Item z of the dispatch is item `batch_base + z` and starts `stride_*`
// elements after the operand's offset.
//
// Each workgroup computes a BM×BN tile of C, walking K in steps of BK: every invocation helps
// copy the BK-deep slices of op(A) ([BM][BK]) and op(B) ([BK][BN]) into workgroup memory,
// zeros outside the matrices, so that any M, N, K, offset, stride and layout works and the
// cooperative loads only ever read aligned rows of workgroup memory. Then each subgroup
// multiplies one SM×SN block of the tile: (SM/16)×(SN/16) f32 accumulators held as
// cooperative matrices, each a 16×16 product summed over the slice in 16-deep steps.
//
// The tile has SUB_BLOCKS blocks, one per subgroup where subgroups are 32 wide. Wider
// subgroups (64, 128: fewer of them) take the blocks in turns, one walk over K each; so that
// every subgroup has a block in every turn, kernel_config.rs runs this kernel only where
// subgroups are powers of two from WG / SUB_BLOCKS to WG wide.
//
// Epilogue: each accumulator goes through the block's f32 16×16 scratch in workgroup memory,
// from which the subgroup's lanes add the bias and store the elements inside C (`store`:
// C, or the pre-activation and C = GELU of it).
//
// BM, BN, BK, SM, SN, WG (kernel_config.rs), TRANS_A, TRANS_B, the operands (a, b, bias, c
// and pre, with their access functions: src/backend/gpu/operand.rs) and the epilogue (the
// tiled product's, matmul_store*.wgsl) are generated per variant by
// src/backend/gpu/ops/matmul_coop.rs.

enable f16;
enable wgpu_cooperative_matrix;

//!CONSTS

const SUB_COLUMNS: u32 = BN / SN;
const SUB_BLOCKS: u32 = (BM / SM) * SUB_COLUMNS;
/// Elements of one 16×16 matrix.
const MATRIX: u32 = 256u;

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/matmul.rs (the tiled product's; k_split is unused here).
@group(0) @binding(0) var<uniform> p: Params;
//!OPERANDS

// op(A) slice [BM][BK] and op(B) slice [BK][BN], row-major; one 16×16 scratch per block.
var<workgroup> a_tile: array<f16, BM * BK>;
var<workgroup> b_tile: array<f16, BK * BN>;
var<workgroup> c_scratch: array<f32, SUB_BLOCKS * MATRIX>;
var<workgroup> subgroup_count: u32;

//!EPILOGUE

// (row, k) of slot i of the A slice; consecutive slots are consecutive in A's storage.
fn a_slot(i: u32) -> vec2<u32> {
    if TRANS_A {
        return vec2<u32>(i % BM, i / BM);
    }
    return vec2<u32>(i / BK, i % BK);
}

// (k, column) of slot i of the B slice; consecutive slots are consecutive in B's storage.
fn b_slot(i: u32) -> vec2<u32> {
    if TRANS_B {
        return vec2<u32>(i % BK, i / BK);
    }
    return vec2<u32>(i / BN, i % BN);
}

fn fetch_a(gm: u32, gk: u32, a_base: u32) -> f16 {
    if gm >= p.m || gk >= p.k {
        return 0.0h;
    }
    if TRANS_A {
        return a[a_base + gk * p.m + gm];
    }
    return a[a_base + gm * p.k + gk];
}

fn fetch_b(gk: u32, gn: u32, b_base: u32) -> f16 {
    if gk >= p.k || gn >= p.n {
        return 0.0h;
    }
    if TRANS_B {
        return b[b_base + gn * p.k + gk];
    }
    return b[b_base + gk * p.n + gn];
}

// Copies the slices at k0 into workgroup memory (all invocations).
fn stage(tid: u32, m0: u32, n0: u32, k0: u32, a_base: u32, b_base: u32) {
    for (var i = tid; i < BM * BK; i += WG) {
        let s = a_slot(i);
        a_tile[s.x * BK + s.y] = fetch_a(m0 + s.x, k0 + s.y, a_base);
    }
    for (var i = tid; i < BK * BN; i += WG) {
        let s = b_slot(i);
        b_tile[s.x * BN + s.y] = fetch_b(k0 + s.x, n0 + s.y, b_base);
    }
}

// Stores accumulator `acc` of the subgroup's block through the block's scratch: C rows from
// gm0, columns from gn0, with the bias, inside C only.
fn finish(
    acc: coop_mat16x16<f32, C>,
    block: u32,
    gm0: u32,
    gn0: u32,
    c_base: u32,
    lane: u32,
    lanes: u32,
) {
    let scratch = block * MATRIX;
    coopStoreT(acc, &c_scratch[scratch], 16u);
    workgroupBarrier();
    for (var i = lane; i < MATRIX; i += lanes) {
        let gm = gm0 + i / 16u;
        let gn = gn0 + i % 16u;
        if gm < p.m && gn < p.n {
            var x = c_scratch[scratch + i];
            if p.has_bias != 0u {
                x += bias_ld(p.bias_offset + gn);
            }
            store(c_base + gm * p.n + gn, x);
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn matmul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    let item = p.batch_base + wg.z;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let a_base = p.a_offset + item * p.stride_a;
    let b_base = p.b_offset + item * p.stride_b;
    let c_base = p.c_offset + item * p.stride_c;
    // The same for every invocation, and known to be: cooperative operations and barriers
    // must be reached by all of them.
    if tid == 0u {
        subgroup_count = subgroups;
    }
    let turns = SUB_BLOCKS / workgroupUniformLoad(&subgroup_count);
    for (var turn = 0u; turn < turns; turn++) {
        let block = turn * subgroups + subgroup;
        let sm0 = (block / SUB_COLUMNS) * SM;
        let sn0 = (block % SUB_COLUMNS) * SN;
        var acc00 = coop_mat16x16<f32, C>();
        var acc01 = coop_mat16x16<f32, C>();
        var acc10 = coop_mat16x16<f32, C>();
        var acc11 = coop_mat16x16<f32, C>();
        for (var k0 = 0u; k0 < p.k; k0 += BK) {
            workgroupBarrier();
            stage(tid, m0, n0, k0, a_base, b_base);
            workgroupBarrier();
            for (var kk = 0u; kk < BK; kk += 16u) {
                let a0 = coopLoadT<coop_mat16x16<f16, A>>(&a_tile[sm0 * BK + kk], BK);
                let a1 = coopLoadT<coop_mat16x16<f16, A>>(&a_tile[(sm0 + 16u) * BK + kk], BK);
                let b0 = coopLoadT<coop_mat16x16<f16, B>>(&b_tile[kk * BN + sn0], BN);
                let b1 = coopLoadT<coop_mat16x16<f16, B>>(&b_tile[kk * BN + sn0 + 16u], BN);
                acc00 = coopMultiplyAdd(a0, b0, acc00);
                acc01 = coopMultiplyAdd(a0, b1, acc01);
                acc10 = coopMultiplyAdd(a1, b0, acc10);
                acc11 = coopMultiplyAdd(a1, b1, acc11);
            }
        }
        let gm = m0 + sm0;
        let gn = n0 + sn0;
        finish(acc00, block, gm, gn, c_base, lane, lanes);
        finish(acc01, block, gm, gn + 16u, c_base, lane, lanes);
        finish(acc10, block, gm + 16u, gn, c_base, lane, lanes);
        finish(acc11, block, gm + 16u, gn + 16u, c_base, lane, lanes);
    }
}
