// Philox4x32-10 counter-based random numbers for dropout: functions only (no bindings, no
// entry points), to be concatenated in front of the kernels that use them.
//
// Contract: bit-identical to src/rng.rs (the CPU side and the tests check this).
//   philox4x32_10(counter, key) == rng::philox4x32_10 (Random123's philox4x32, 10 rounds).
//   dropout_uniform(seed, step, site, element) == rng::uniform(&DropoutKey { seed, step, site },
//   element), with the u64 seed and step passed as vec2(low 32 bits, high 32 bits). Elements
//   come in tiles of 64, eight calls to a tile: with t = e / 64 and w = e % 64, element e draws
//   16 bits, (r[w / 16] >> (16 * ((w / 8) % 2))) & 0xffff, of r = philox4x32_10(counter, key)
//   for call q = 8t + w % 8 and
//     counter = (q, site, step.x, step.y)
//     key     = (seed.x, seed.y ^ (q >> 32)) = (seed.x, seed.y) here, as element is a u32
//   and the draw is f32(n) * 2^-16 for those 16 bits n: exact, in [0, 1). Dropout keeps an
//   element when its draw is >= p and scales kept elements by 1 / (1 - p).
//
// Names are prefixed (philox_, PHILOX_) where they are not part of the contract, so that they
// do not collide with the kernels this file is concatenated with.

const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
// Weyl key increments, added (wrapping) to the key between rounds.
const PHILOX_W: vec2<u32> = vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
// 2^-16, exact: the 16-bit draw times this is exact in f32.
const PHILOX_INV_2_16: f32 = 1.0 / 65536.0;

// The full 64-bit product a * b as vec2(high word, low word). WGSL has no 64-bit integers, so
// the high word is assembled from 16-bit halves: each partial product fits a u32, and the
// middle column sum (three terms below 2^16) cannot overflow either.
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let a_lo = a & 0xFFFFu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xFFFFu;
    let b_hi = b >> 16u;
    let ll = a_lo * b_lo;
    let lh = a_lo * b_hi;
    let hl = a_hi * b_lo;
    let hh = a_hi * b_hi;
    let mid = (ll >> 16u) + (lh & 0xFFFFu) + (hl & 0xFFFFu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    // u32 multiplication wraps, which is exactly the low word.
    return vec2<u32>(hi, a * b);
}

// One Philox4x32 round (Random123's _philox4x32round).
fn philox_round(c: vec4<u32>, k: vec2<u32>) -> vec4<u32> {
    let p0 = mulhilo(PHILOX_M0, c.x);
    let p1 = mulhilo(PHILOX_M1, c.z);
    return vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
}

// Philox4x32 with 10 rounds: the first uses key as given, the key is bumped before each of
// the other nine.
fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = philox_round(counter, key);
    var k = key;
    for (var i = 1u; i < 10u; i++) {
        k += PHILOX_W;
        c = philox_round(c, k);
    }
    return c;
}

// The outputs of dropout's call `call` under (seed, step, site); seed and step are u64s split
// as vec2(low, high). Its 16-bit halves are the draws of elements 64 * (call / 8) + 16 * j +
// 8 * h + call % 8, j the output and h the half (the layout above).
fn dropout_call(seed: vec2<u32>, step: vec2<u32>, site: u32, call: u32) -> vec4<u32> {
    return philox4x32_10(vec4<u32>(call, site, step.x, step.y), seed);
}

// The dropout draw in [0, 1) of element under (seed, step, site). Eight elements share one
// call: a kernel that handles all of a call's elements calls dropout_call once itself.
fn dropout_uniform(seed: vec2<u32>, step: vec2<u32>, site: u32, element: u32) -> f32 {
    let w = element & 63u;
    let r = dropout_call(seed, step, site, ((element >> 6u) << 3u) | (w & 7u));
    let bits = (r[w >> 4u] >> (((w >> 3u) & 1u) * 16u)) & 0xFFFFu;
    return f32(bits) * PHILOX_INV_2_16;
}
