// Matrix product, register-tiled: C[M,N] = op(A)·op(B) (+ bias[N]) for each batch item.
// A and B are stored in one dtype (f32, f16 or bf16), C and the bias each in it or in f32;
// the products, sums and bias are f32, rounded once where C is stored.
//
// Layout: row-major; A is [M,K] ([K,M] when TRANS_A), B is [K,N] ([N,K] when TRANS_B), C is
// [M,N]. Item z of the dispatch is item `batch_base + z` and starts `stride_*` elements after
// the operand's offset.
//
// Split over K (k_split > 0, one item): z is the slice, which takes K from z·k_split (a
// multiple of BK) up to k_split further and stores its partial product, without bias, to C's
// slice z (C is then the [slices, M, N] partials that matmul_splits.wgsl adds up).
//
// Each workgroup computes a BM×BN tile of C, walking K in steps of BK: the workgroup copies
// the BK-deep slices of op(A) and op(B) into workgroup memory (k-major, so that each thread
// reads its TM rows and TN columns as vec4s), then every thread accumulates a TM×TN block of
// C in registers. Out-of-range elements load as 0 and are never stored, so any size works.
// A thread's TN columns are TN/4 vec4s interleaved with its neighbours' (vec4 j of thread x is
// column vec4 j·(BN/TN) + x), so that neighbouring threads read one contiguous run of workgroup
// memory and store contiguous runs of C.
// Each thread holds its share of the next slice in registers (the loader's slots, fetched
// before the multiply-adds, stashed into workgroup memory after them), so that the loads'
// latency overlaps arithmetic even with one workgroup per multiprocessor.
//
// The constants BM, BN, BK, TM, TN, TRANS_A, TRANS_B, PAIRS (C holds two elements a word),
// the operands' bindings and access functions (bias_ld, c_st, c_st2, ... of
// src/backend/gpu/operand.rs), the tile loader (scalar, or four elements a load when the
// contiguous dimensions and offsets are multiples of 4) and the epilogue (store C, or store
// the pre-activation and C = GELU of it, with gelu.wgsl in front) are generated per variant by
// src/backend/gpu/ops/matmul.rs. So is the straight-line code over a thread's registers: a code
// line holding `$i` is repeated for each of its TM rows, `$j` for each vec4 of its TN columns,
// `$a` for each vec4 of its TM rows (`$i4` and `$ic` are row i's vec4 and component), `$u` and
// `$w` for each of its loader slots of op(A) and op(B). The accumulators and slots are named
// variables, never an array: a private array indexed in a loop lives in local memory on
// NVIDIA's driver, not in registers, and the kernel then runs a small fraction of the card's
// f32 rate (BENCHMARKS.md). The loaders widen 16-bit elements to f32 as they stash them, so
// that workgroup memory and the multiply-adds are f32 in every dtype.

//!CONSTS

const THREADS: u32 = (BM / TM) * (BN / TN);

// struct Params (binding 0) is generated in front of this file from its Rust declaration
// in src/backend/gpu/ops/matmul.rs.
@group(0) @binding(0) var<uniform> p: Params;
// A (binding 1), B (2), the bias (3), C (4) and, with GELU, the pre-activation (5).
//!OPERANDS

// op(A) slice, [BK][BM], and op(B) slice, [BK][BN], as vec4s along M and N.
var<workgroup> a_tile: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> b_tile: array<vec4<f32>, BK * BN / 4u>;

fn put_a(kk: u32, mm: u32, v: f32) {
    let s = kk * BM + mm;
    a_tile[s / 4u][s % 4u] = v;
}

fn put_b(kk: u32, nn: u32, v: f32) {
    let s = kk * BN + nn;
    b_tile[s / 4u][s % 4u] = v;
}

//!LOADER

//!EPILOGUE

@compute @workgroup_size(BN / TN, BM / TM)
fn matmul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let split = p.k_split != 0u;
    let item = select(p.batch_base + wg.z, p.batch_base, split);
    let k_begin = select(0u, wg.z * p.k_split, split);
    let k_end = select(p.k, min(p.k, k_begin + p.k_split), split);
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let a_base = p.a_offset + item * p.stride_a;
    let b_base = p.b_offset + item * p.stride_b;
    let c_base = select(p.c_offset + item * p.stride_c, p.c_offset + wg.z * p.m * p.n, split);

    var acc$i_$j = vec4<f32>(0.0);
    var staged_a$u = fetch_a(tid + $u * THREADS, m0, k_begin, k_end, a_base);
    var staged_b$w = fetch_b(tid + $w * THREADS, n0, k_begin, k_end, b_base);
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        workgroupBarrier();
        stash_a(tid + $u * THREADS, staged_a$u);
        stash_b(tid + $w * THREADS, staged_b$w);
        workgroupBarrier();
        // The next slice's loads are in flight while this one is multiplied (past k_end they
        // are zeros and touch no memory).
        staged_a$u = fetch_a(tid + $u * THREADS, m0, k0 + BK, k_end, a_base);
        staged_b$w = fetch_b(tid + $w * THREADS, n0, k0 + BK, k_end, b_base);
        for (var kk = 0u; kk < BK; kk++) {
            let a$a = a_tile[(kk * BM + lid.y * TM) / 4u + $a];
            let b$j = b_tile[kk * BN / 4u + $j * (BN / TN) + lid.x];
            acc$i_$j = fma(vec4<f32>(a$i4.$ic), b$j, acc$i_$j);
        }
    }
    store4(m0 + lid.y * TM + $i, n0 + 4u * ($j * (BN / TN) + lid.x), c_base, acc$i_$j);
}

// Column n's value x with the bias added.
fn biased(x: f32, n: u32) -> f32 {
    if p.has_bias != 0u {
        return x + bias_ld(p.bias_offset + n);
    }
    return x;
}

// Stores the elements of v that fall inside C: columns gn .. gn + 3 of row gm, bias added.
fn store4(gm: u32, gn: u32, c_base: u32, v: vec4<f32>) {
    if gm >= p.m {
        return;
    }
    let row = c_base + gm * p.n;
    if PAIRS {
        store4_pairs(row, gn, v);
        return;
    }
    for (var c = 0u; c < 4u; c++) {
        let n = gn + c;
        if n < p.n {
            store(row + n, biased(v[c], n));
        }
    }
}

// store4 for 16-bit C: whole words for the pairs that start on an even element (row + gn is
// odd where N or an item's stride is), lone halves at the ends, whose other halves are the
// neighbouring invocations'.
fn store4_pairs(row: u32, gn: u32, v: vec4<f32>) {
    var c = (row + gn) & 1u;
    if c == 1u && gn < p.n {
        store(row + gn, biased(v.x, gn));
    }
    for (; c + 1u < 4u; c += 2u) {
        let n = gn + c;
        if n + 1u < p.n {
            store2(row + n, vec2<f32>(biased(v[c], n), biased(v[c + 1u], n + 1u)));
        } else if n < p.n {
            store(row + n, biased(v[c], n));
        }
    }
    if c == 3u && gn + 3u < p.n {
        store(row + gn + 3u, biased(v.w, gn + 3u));
    }
}
