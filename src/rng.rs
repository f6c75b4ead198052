//! Counter-based random numbers for dropout: Philox4x32-10 (Salmon, Moraes, Dror, Shaw,
//! "Parallel random numbers: as easy as 1, 2, 3", SC'11; the Random123 library), with the
//! same bits on the CPU and in WGSL (`shaders/philox.wgsl`).
//!
//! Why counter-based: a dropout mask must be reproducible from its coordinates alone, so that
//! the forward and backward passes (and the CPU and GPU backends) agree without storing the
//! mask, and so that every GPU thread can draw its own element with no shared state.
//!
//! # Layout (the contract `shaders/philox.wgsl` implements bit for bit)
//!
//! Elements are drawn in tiles of [`TILE`] = 64, eight Philox4x32-10 calls to a tile, each
//! element taking 16 of a call's 128 bits. Element `e` of dropout site `site` at training step
//! `step` under `seed`, with `t = e / 64` and `w = e % 64`, draws
//!
//! ```text
//! call  q = 8·t + w % 8
//! bits  (r[j] >> 16·h) & 0xffff of the call's outputs r, j = w / 16, h = (w / 8) % 2
//! counter = [q low 32 bits, site, step low 32 bits, step high 32 bits]
//! key     = [seed low 32 bits, (seed high 32 bits) ^ (q high 32 bits)]
//! ```
//!
//! so that eight consecutive calls side by side in the lanes of a vector give, in each output
//! and half, eight consecutive elements: the CPU draws a tile with no transposition (and any
//! vector of 1, 2, 4 or 8 lanes gets runs in element order). The high bits of `q` only matter
//! for elements at or beyond 2^35; folding them into the key keeps those elements distinct
//! from the low ones (the WGSL side takes a `u32` element, so for it they are always 0).
//!
//! The draw is the 16-bit value `n` as `n·2^-16`: exact in f32 on every device, in `[0, 1)`.
//! Sixteen bits, not the 24 an f32 could hold, so that one call serves eight elements: Philox
//! is most of what dropout costs on a CPU. The drop rate is then ⌈p·2^16⌉/2^16, within
//! 1.6e-5 of `p` (FlashAttention keeps 8 bits).
//!
//! Dropout keeps an element when its draw is at least `p` ([`keep`]) and scales kept elements
//! by `1 / (1 - p)`; this module only decides which are kept.

use crate::backend::cpu::simd;

/// Philox4x32 round multipliers (Random123's PHILOX_M4x32_0 and _1).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
/// Weyl-sequence key increments (golden ratio and sqrt(3) - 1, as 32-bit fractions).
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// 2^-16: turns a 16-bit draw into a float in [0, 1) exactly.
const INV_2_16: f32 = 1.0 / 65_536.0;

/// The high and low words of the full 64-bit product `a * b`.
#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// One Philox4x32 round (Random123's `_philox4x32round`).
#[inline(always)]
fn round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(M0, c[0]);
    let (hi1, lo1) = mulhilo(M1, c[2]);
    [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
}

/// Philox4x32 with 10 rounds: four 32-bit outputs from a 128-bit counter and a 64-bit key.
///
/// Matches Random123's `philox4x32(ctr, key)` (its known-answer tests are in `tests/rng.rs`).
/// The first round uses `key` as given; the key is bumped by the Weyl increments before each
/// of the other nine.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for i in 0..10 {
        if i > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        c = round(c, k);
    }
    c
}

/// Where a dropout draw happens: the random stream of one dropout layer at one training step.
///
/// Together with an element index it fully determines the draw (see the module doc for the
/// exact Philox counter and key). Change `seed` for another run, `step` every optimizer
/// step, and give every dropout layer (and every use of it within a step, e.g. attention vs.
/// residual dropout) its own `site`, so that no two masks are correlated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutKey {
    /// The run's seed.
    pub seed: u64,
    /// The training step.
    pub step: u64,
    /// Which dropout site (layer and position within it) draws.
    pub site: u32,
}

/// Elements per tile of the layout (module doc): eight calls of four 32-bit outputs, 16 bits
/// to an element.
pub const TILE: u64 = 64;
/// Philox calls per tile; also the most vector lanes that get a tile's draws in element
/// order.
pub const CALLS_PER_TILE: u64 = 8;

/// The call that draws `element`, which of its four outputs, and the shift of its 16 bits.
#[inline(always)]
fn position(element: u64) -> (u64, usize, u32) {
    let w = element % TILE;
    let call = element / TILE * CALLS_PER_TILE + w % CALLS_PER_TILE;
    (call, (w / 16) as usize, ((w / 8) % 2 * 16) as u32)
}

impl DropoutKey {
    /// Philox's four outputs for call `call` of the layout.
    #[inline(always)]
    fn call(&self, call: u64) -> [u32; 4] {
        let counter = [
            call as u32,
            self.site,
            self.step as u32,
            (self.step >> 32) as u32,
        ];
        let key = [
            self.seed as u32,
            ((self.seed >> 32) as u32) ^ ((call >> 32) as u32),
        ];
        philox4x32_10(counter, key)
    }

    /// The draws of tile `tile`'s 64 elements, in element order, one call at a time: lane `l`
    /// of the tile's calls draws elements `16·j + 8·h + l` (module doc).
    fn tile(&self, tile: u64) -> [u32; TILE as usize] {
        let mut bits = [0; TILE as usize];
        for lane in 0..CALLS_PER_TILE as usize {
            let outputs = self.call(tile * CALLS_PER_TILE + lane as u64);
            for (j, r) in outputs.into_iter().enumerate() {
                bits[16 * j + lane] = r & 0xffff;
                bits[16 * j + 8 + lane] = r >> 16;
            }
        }
        bits
    }
}

/// The low and high words of `m · c` in every lane, for a multiplier `m` the same in every
/// lane (pulp's `widening_mul_u32s` of a splat; the AVX-512 path below relies on it). Under
/// AVX-512 the low words come from one 32-bit multiply: from pulp's version, which takes them
/// from the two 64-bit products, the compiler made a third, 64-bit multiply and an extra
/// blend; masked shuffles instead of the blend were slower still (BENCHMARKS.md).
#[inline(always)]
fn widening_mul<S: pulp::Simd>(s: S, m: u32, c: S::u32s) -> (S::u32s, S::u32s) {
    let m = s.splat_u32s(m);
    #[cfg(target_arch = "x86_64")]
    if let Some(v4) = (&s as &dyn std::any::Any).downcast_ref::<pulp::x86::V4>() {
        use std::arch::x86_64::__m512i;
        let f = v4.avx512f;
        let (m, c): (__m512i, __m512i) = (bytemuck::cast(m), bytemuck::cast(c));
        // The high words: each 64-bit lane's product of its even word (moved down a word)
        // and of its odd word; the low words in one 32-bit multiply.
        let even = f._mm512_srli_epi64::<32>(f._mm512_mul_epu32(m, c));
        let odd = f._mm512_mul_epu32(m, f._mm512_srli_epi64::<32>(c));
        let hi = f._mm512_mask_blend_epi32(0xaaaa, even, odd);
        let lo = f._mm512_mullo_epi32(m, c);
        return (bytemuck::cast(lo), bytemuck::cast(hi));
    }
    s.widening_mul_u32s(m, c)
}

/// What the vector calls of one key share for calls with the same high word: the products of
/// the first two rounds that are the same in every lane, and the later rounds' keys, as
/// vectors (made once, not once a round of every tile).
struct VectorKey<S: pulp::Simd> {
    s: S,
    /// The calls' high 32 bits.
    high: u32,
    lane_index: S::u32s,
    /// Round 1's word 2 is `hi0 ^ step_hi ^ k1`: this is `step_hi ^ k1`.
    round1: S::u32s,
    /// Round 2's words 0, 2 and 3 take `lo1 ^ k0`, `hi0 ^ k1` and `lo0` of its scalar
    /// product and bumped key.
    round2: [S::u32s; 3],
    /// The keys of rounds 3 to 10.
    keys: [[S::u32s; 2]; 8],
}

impl<S: pulp::Simd> VectorKey<S> {
    #[inline(always)]
    fn new(s: S, key: &DropoutKey, high: u32) -> Self {
        const LANE_INDEX: [u32; PAIR_LANES] =
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let lanes = std::mem::size_of::<S::u32s>() / 4;
        let mut k = [key.seed as u32, ((key.seed >> 32) as u32) ^ high];
        let round1 = s.splat_u32s((key.step >> 32) as u32 ^ k[1]);
        // The first two rounds each multiply one word that is the same in every lane (the
        // step's low word, then a word made of it, the site and the key).
        let (hi1, lo1) = mulhilo(M1, key.step as u32);
        let a = hi1 ^ key.site ^ k[0];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        let (hi0, lo0) = mulhilo(M0, a);
        let round2 = [lo1 ^ k[0], hi0 ^ k[1], lo0].map(|v| s.splat_u32s(v));
        let keys = std::array::from_fn(|_| {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
            k.map(|v| s.splat_u32s(v))
        });
        VectorKey {
            s,
            high,
            lane_index: s.partial_load_u32s(&LANE_INDEX[..lanes.min(LANE_INDEX.len())]),
            round1,
            round2,
            keys,
        }
    }

    /// [`DropoutKey::call`] for `G` groups of as many consecutive calls as `S` has u32
    /// lanes (at most sixteen), lane by lane: output `j` of call `first_call + g·lanes + b` is
    /// lane `b` of vector `j` of group `g`. The calls' high word must be `self.high`. Each
    /// round is issued for every group before the next round, so that the groups' multiply
    /// chains overlap (one group waits on the multiplies' latency).
    #[inline(always)]
    fn calls<const G: usize>(&self, first_call: u64) -> [[S::u32s; 4]; G] {
        let s = self.s;
        let lanes = std::mem::size_of::<S::u32s>() / 4;
        let [r2_0, r2_2, r2_3] = self.round2;
        let mut c = [[r2_3; 4]; G];
        for (g, c) in c.iter_mut().enumerate() {
            let call = (first_call as u32).wrapping_add((g * lanes) as u32);
            let counter = s.add_u32s(s.splat_u32s(call), self.lane_index);
            // Round 1: [hi1 ^ site ^ k0, lo1, hi0 ^ step_hi ^ k1, lo0], words 0 and 1 scalar.
            let (lo0, hi0) = widening_mul(s, M0, counter);
            // Round 2: its product of word 0 is scalar.
            let (lo1, hi1) = widening_mul(s, M1, s.xor_u32s(hi0, self.round1));
            *c = [s.xor_u32s(hi1, r2_0), lo1, s.xor_u32s(r2_2, lo0), r2_3];
        }
        for &[k0, k1] in &self.keys {
            for c in c.iter_mut() {
                let (lo0, hi0) = widening_mul(s, M0, c[0]);
                let (lo1, hi1) = widening_mul(s, M1, c[2]);
                *c = [
                    s.xor_u32s(s.xor_u32s(hi1, c[1]), k0),
                    lo1,
                    s.xor_u32s(s.xor_u32s(hi0, c[3]), k1),
                    lo0,
                ];
            }
        }
        c
    }

    /// The calls of the `T` tiles from `tile` (whose calls share the high word `self.high`),
    /// as [`Tile::Whole`] has them, two groups at a time.
    #[inline(always)]
    fn tiles<const T: usize>(&self, tile: u64) -> [[[S::u32s; 4]; CALLS_PER_TILE as usize]; T] {
        let lanes = std::mem::size_of::<S::u32s>() / 4;
        let per_tile = CALLS_PER_TILE as usize / lanes;
        let zero = self.s.splat_u32s(0);
        let mut out = [[[zero; 4]; CALLS_PER_TILE as usize]; T];
        let first_call = tile * CALLS_PER_TILE;
        let mut g = 0;
        while g < T * per_tile {
            let call = first_call + (g * lanes) as u64;
            if g + 1 < T * per_tile {
                let [a, b] = self.calls::<2>(call);
                out[g / per_tile][g % per_tile] = a;
                out[(g + 1) / per_tile][(g + 1) % per_tile] = b;
                g += 2;
            } else {
                let [a] = self.calls::<1>(call);
                out[g / per_tile][g % per_tile] = a;
                g += 1;
            }
        }
        out
    }

    /// The calls of the `2·P` tiles from `tile` (whose calls share the high word
    /// `self.high`), as [`Tile::Pair`] has them: a vector of [`PAIR_LANES`] lanes holds two
    /// tiles' calls.
    #[inline(always)]
    fn pairs<const P: usize>(&self, tile: u64) -> [[S::u32s; 4]; P] {
        self.calls::<P>(tile * CALLS_PER_TILE)
    }
}

/// The 16-bit draw of `element` under `key` (module doc), as an integer.
pub fn draw(key: &DropoutKey, element: u64) -> u32 {
    let (call, j, shift) = position(element);
    (key.call(call)[j] >> shift) & 0xffff
}

/// The uniform draw in [0, 1) of `element` under `key`: a multiple of 2^-16, identical to
/// `dropout_uniform` in `shaders/philox.wgsl` (for elements below 2^32).
pub fn uniform(key: &DropoutKey, element: u64) -> f32 {
    draw(key, element) as f32 * INV_2_16
}

/// The factor dropout multiplies kept elements by: 1/(1 − p), and 0 when p = 1 (everything
/// dropped).
pub fn keep_scale(p: f32) -> f32 {
    if p < 1.0 {
        1.0 / (1.0 - p)
    } else {
        0.0
    }
}

/// The least 16-bit draw that dropout with drop probability `p` keeps, ⌈p·2^16⌉ in
/// [0, 2^16]: `draw >= keep_threshold(p)` exactly when `uniform >= p` (p·2^16 is exact).
pub fn keep_threshold(p: f32) -> u32 {
    (p as f64 * 65_536.0).ceil().clamp(0.0, 65_536.0) as u32
}

/// Whether dropout with drop probability `p` keeps `element`: its draw is at least `p`.
///
/// `p <= 0` keeps everything and `p > 1 - 2^-16` drops everything (no draw reaches 1.0).
pub fn keep(key: &DropoutKey, element: u64, p: f32) -> bool {
    uniform(key, element) >= p
}

/// The draws of one tile, or of the part of one that a call of [`for_each_tile`] covers.
pub enum Tile<'a, S: pulp::Simd> {
    /// A whole tile as its calls' outputs: `8 / lanes` groups of `lanes` calls, where lane `b`
    /// of output `j` of group `g` holds, in its low and high halves (`h` = 0, 1), the draws of
    /// elements `16·j + 8·h + g·lanes + b` ([`Tile::for_each_run`]).
    Whole(&'a [[S::u32s; 4]; CALLS_PER_TILE as usize]),
    /// Two whole tiles (or one: `tiles`) under a vector of [`PAIR_LANES`] lanes: lane `b` of
    /// output `j` holds the draws of the first tile's elements `16·j + b` and `16·j + 8 + b`
    /// (low and high halves) for `b < 8`, and of the second's for `b - 8` (unused when there
    /// is one). `low` is true in lanes 0 to 7.
    Pair {
        outputs: &'a [S::u32s; 4],
        low: S::m32s,
        tiles: usize,
    },
    /// Part of a tile: the draws of its elements in order.
    Part(&'a [u32]),
}

impl<S: pulp::Simd> Tile<'_, S> {
    /// Calls `f(range, draws)` for runs of at most `lanes` consecutive elements covering the
    /// tile's (a pair's: both tiles', its runs not in element order; `range` counted from the
    /// first tile's first element given, lane `i` of `draws` the draw of its element `i`). A
    /// whole tile's runs come from its calls' halves in a loop of known bounds, so that the
    /// ranges are constants where it is unrolled.
    #[inline(always)]
    pub fn for_each_run(&self, s: S, mut f: impl FnMut(std::ops::Range<usize>, S::u32s)) {
        let lanes = std::mem::size_of::<S::u32s>() / 4;
        match self {
            Tile::Whole(groups) => {
                for (g, outputs) in groups[..CALLS_PER_TILE as usize / lanes].iter().enumerate() {
                    for (j, r) in outputs.iter().enumerate() {
                        let at = 16 * j + g * lanes;
                        f(at..at + lanes, s.and_u32s(*r, s.splat_u32s(0xffff)));
                        let at = at + 8;
                        f(
                            at..at + lanes,
                            s.wrapping_dyn_shr_u32s(*r, s.splat_u32s(16)),
                        );
                    }
                }
            }
            // Sixteen elements in order are one call's low halves then its high halves: half
            // of one vector and half of the other, the right half brought over by a rotation.
            Tile::Pair {
                outputs,
                low,
                tiles,
            } => {
                let half = PAIR_LANES / 2;
                for (j, r) in outputs.iter().enumerate() {
                    let lo = s.and_u32s(*r, s.splat_u32s(0xffff));
                    let hi = s.wrapping_dyn_shr_u32s(*r, s.splat_u32s(16));
                    let first = s.select_u32s(*low, lo, s.rotate_right_u32s(hi, half));
                    f(16 * j..16 * j + 16, first);
                    if *tiles == 2 {
                        let second = s.select_u32s(*low, s.rotate_right_u32s(lo, half), hi);
                        f(64 + 16 * j..64 + 16 * j + 16, second);
                    }
                }
            }
            Tile::Part(draws) => {
                for (i, draws) in draws.chunks(lanes).enumerate() {
                    f(
                        i * lanes..i * lanes + draws.len(),
                        s.partial_load_u32s(draws),
                    );
                }
            }
        }
    }
}

/// Lanes of a vector that takes two tiles' calls side by side ([`Tile::Pair`]).
pub const PAIR_LANES: usize = 2 * CALLS_PER_TILE as usize;

/// Calls `f(range, tile)` for each tile that elements `first_element .. first_element + len`
/// touch, in order: `range` is the tile's part of `0..len`, and `tile` its draws, the first
/// for element `first_element + range.start` (for a [`Tile::Pair`], two tiles and their range).
///
/// A whole tile takes its eight calls side by side in vectors, two tiles at a time where there
/// are two, so that their multiply chains overlap; under a vector of sixteen lanes, two tiles
/// share one vector (a lone one wastes half of it), and four go at a time. A partial tile at
/// either end, and any tile under a vector of more lanes, take one call at a time.
#[inline(always)]
pub fn for_each_tile<S: pulp::Simd>(
    s: S,
    key: &DropoutKey,
    first_element: u64,
    len: usize,
    mut f: impl FnMut(std::ops::Range<usize>, Tile<'_, S>),
) {
    let lanes = std::mem::size_of::<S::u32s>() / 4;
    let vector_tiles = lanes as u64 <= CALLS_PER_TILE && CALLS_PER_TILE % lanes as u64 == 0;
    let pair_tiles = lanes == PAIR_LANES;
    let call_high = |element: u64| ((element / TILE * CALLS_PER_TILE) >> 32) as u32;
    let mut vector_key = VectorKey::new(s, key, call_high(first_element));
    let low = s.less_than_u32s(vector_key.lane_index, s.splat_u32s(PAIR_LANES as u32 / 2));
    let end = first_element + len as u64;
    let whole = TILE as usize;
    let mut element = first_element;
    while element < end {
        let tile = element / TILE;
        let tile_end = (tile + 1).saturating_mul(TILE);
        let start = (element - first_element) as usize;
        // Whole tiles from here to `element + n·TILE` whose calls share the high word.
        let whole_tiles = |n: u64| {
            n.checked_mul(TILE)
                .and_then(|span| element.checked_add(span))
                .is_some_and(|e| e <= end && call_high(e - 1) == call_high(element))
        };
        if (vector_tiles || pair_tiles) && element % TILE == 0 && whole_tiles(1) {
            if vector_key.high != call_high(element) {
                vector_key = VectorKey::new(s, key, call_high(element));
            }
            if vector_tiles && whole_tiles(2) {
                let [first, second] = vector_key.tiles::<2>(tile);
                f(start..start + whole, Tile::Whole(&first));
                f(start + whole..start + 2 * whole, Tile::Whole(&second));
                element += 2 * TILE;
            } else if vector_tiles {
                let [only] = vector_key.tiles::<1>(tile);
                f(start..start + whole, Tile::Whole(&only));
                element += TILE;
            } else if whole_tiles(4) {
                let [first, second] = vector_key.pairs::<2>(tile);
                for (i, outputs) in [&first, &second].into_iter().enumerate() {
                    let at = start + 2 * i * whole;
                    f(
                        at..at + 2 * whole,
                        Tile::Pair {
                            outputs,
                            low,
                            tiles: 2,
                        },
                    );
                }
                element += 4 * TILE;
            } else {
                // A lone whole tile (a row of 64 attention scores) still takes a vector of
                // calls: the upper half's, for the tile after it, are discarded.
                let [outputs] = vector_key.pairs::<1>(tile);
                let tiles = if whole_tiles(2) { 2 } else { 1 };
                f(
                    start..start + tiles * whole,
                    Tile::Pair {
                        outputs: &outputs,
                        low,
                        tiles,
                    },
                );
                element += tiles as u64 * TILE;
            }
            continue;
        }
        let run_end = tile_end.min(end);
        let w = (element % TILE) as usize;
        let n = (run_end - element) as usize;
        f(start..start + n, Tile::Part(&key.tile(tile)[w..w + n]));
        element = run_end;
    }
}

/// Writes the draws of elements `first_element .. first_element + out.len()` into `out`, equal
/// to [`uniform`] element by element but with eight elements to a Philox call and as many
/// calls at once as the CPU has SIMD lanes. The ops apply masks without materialising the
/// draws; this is for seeing them (a mask's statistics, the layout under every instruction
/// set in the tests).
#[inline]
pub fn fill_uniform(key: &DropoutKey, first_element: u64, out: &mut [f32]) {
    simd::run(FillUniform {
        key,
        first_element,
        out,
    });
}

struct FillUniform<'a> {
    key: &'a DropoutKey,
    first_element: u64,
    out: &'a mut [f32],
}

impl pulp::WithSimd for FillUniform<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        fill_uniform_with(s, self.key, self.first_element, self.out)
    }
}

/// [`fill_uniform`] inside a SIMD body that already has its instruction set `s`.
#[inline(always)]
pub fn fill_uniform_with<S: pulp::Simd>(
    s: S,
    key: &DropoutKey,
    first_element: u64,
    out: &mut [f32],
) {
    for_each_tile(
        s,
        key,
        first_element,
        out.len(),
        #[inline(always)]
        |range, tile| {
            let out = &mut out[range];
            tile.for_each_run(
                s,
                #[inline(always)]
                |run, bits| simd::store(s, &mut out[run], unit_floats(s, bits)),
            );
        },
    );
}

/// 16-bit draws as their floats `n·2^-16`. The bits of 2^23 + n are 0x4B00_0000 | n, so an or
/// and a subtraction make the float (the SIMD layer has no integer-to-float conversion).
#[inline(always)]
fn unit_floats<S: pulp::Simd>(s: S, bits: S::u32s) -> S::f32s {
    const TWO_23: f32 = 8_388_608.0;
    let biased = s.or_u32s(bits, s.splat_u32s(TWO_23.to_bits()));
    let n = s.sub_f32s(s.transmute_f32s_u32s(biased), s.splat_f32s(TWO_23));
    s.mul_f32s(n, s.splat_f32s(INV_2_16))
}
