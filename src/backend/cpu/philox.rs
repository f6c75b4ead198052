//! The dropout draws of [`crate::rng`]'s layout in SIMD vectors: a tile's eight Philox calls
//! side by side in the lanes of a vector (or two tiles' under sixteen lanes), so that each
//! output and half of the calls holds consecutive elements, in order. The same bits as
//! [`crate::rng::draw`] element by element; the tests check it under every instruction set.

use crate::rng::{mulhilo, DropoutKey, CALLS_PER_TILE, M0, M1, TILE, W0, W1};

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

/// The draws of one tile, or of the part of one that a call of [`for_each_tile`] covers.
pub(crate) enum Tile<'a, S: pulp::Simd> {
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
pub(crate) const PAIR_LANES: usize = 2 * CALLS_PER_TILE as usize;

/// Calls `f(range, tile)` for each tile that elements `first_element .. first_element + len`
/// touch, in order: `range` is the tile's part of `0..len`, and `tile` its draws, the first
/// for element `first_element + range.start` (for a [`Tile::Pair`], two tiles and their range).
///
/// A whole tile takes its eight calls side by side in vectors, two tiles at a time where there
/// are two, so that their multiply chains overlap; under a vector of sixteen lanes, two tiles
/// share one vector (a lone one wastes half of it), and four go at a time. A partial tile at
/// either end, and any tile under a vector of more lanes, take one call at a time.
#[inline(always)]
pub(crate) fn for_each_tile<S: pulp::Simd>(
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
