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
//! Element `e` of dropout site `site` at training step `step` under `seed` draws lane
//! `e % 4` of one Philox4x32-10 call, whose inputs are, with `q = e / 4`:
//!
//! ```text
//! counter = [q low 32 bits, site, step low 32 bits, step high 32 bits]
//! key     = [seed low 32 bits, (seed high 32 bits) ^ (q high 32 bits)]
//! ```
//!
//! Nothing is XOR-ed into the counter. Four consecutive elements share one call, which is what
//! makes [`fill_uniform`] four times cheaper than [`uniform`]. The high bits of `q` only matter
//! for elements at or beyond 2^34; folding them into the key keeps those elements distinct
//! from the low ones (the WGSL side takes a `u32` element, so for it they are always 0).
//!
//! The draw is `(r >> 8) as f32 * 2^-24` for the lane's 32-bit output `r`: 24 bits fit an
//! f32's significand, so the value is exact (no rounding that could differ between the CPU and
//! a GPU) and lies in `[0, 1)`; never 1.0, which rounding the full 32 bits could produce.
//!
//! Dropout keeps an element when its draw is at least `p` ([`keep`]) and scales kept elements
//! by `1 / (1 - p)`; this module only decides which are kept.

/// Philox4x32 round multipliers (Random123's PHILOX_M4x32_0 and _1).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
/// Weyl-sequence key increments (golden ratio and sqrt(3) - 1, as 32-bit fractions).
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// 2^-24: turns a 24-bit integer into a float in [0, 1) exactly.
const INV_2_24: f32 = 1.0 / 16_777_216.0;

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

impl DropoutKey {
    /// Philox's four outputs for the group of elements `4 * quad .. 4 * quad + 4`.
    #[inline(always)]
    fn block(&self, quad: u64) -> [u32; 4] {
        let counter = [
            quad as u32,
            self.site,
            self.step as u32,
            (self.step >> 32) as u32,
        ];
        let key = [
            self.seed as u32,
            ((self.seed >> 32) as u32) ^ ((quad >> 32) as u32),
        ];
        philox4x32_10(counter, key)
    }
}

impl DropoutKey {
    /// [`DropoutKey::block`] for `G` groups of as many consecutive quads as `S` has u32
    /// lanes, lane by lane: output `j` of quad `first_quad + g·lanes + b` is lane `b` of
    /// vector `j` of group `g`. The quads must share their high 32 bits (the key depends on
    /// them). Each round is issued for every group before the next round, so that the groups'
    /// multiply chains overlap (one group waits on the multiplies' latency).
    #[inline(always)]
    fn blocks<S: pulp::Simd, const G: usize>(
        &self,
        s: S,
        first_quad: u64,
        lane_index: S::u32s,
    ) -> [[S::u32s; 4]; G] {
        let lanes = std::mem::size_of::<S::u32s>() / 4;
        let mut c = [[s.splat_u32s(0); 4]; G];
        for (g, c) in c.iter_mut().enumerate() {
            let quad = (first_quad as u32).wrapping_add((g * lanes) as u32);
            *c = [
                s.add_u32s(s.splat_u32s(quad), lane_index),
                s.splat_u32s(self.site),
                s.splat_u32s(self.step as u32),
                s.splat_u32s((self.step >> 32) as u32),
            ];
        }
        let mut k = [
            self.seed as u32,
            ((self.seed >> 32) as u32) ^ ((first_quad >> 32) as u32),
        ];
        let (m0, m1) = (s.splat_u32s(M0), s.splat_u32s(M1));
        for i in 0..10 {
            if i > 0 {
                k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
            }
            let (k0, k1) = (s.splat_u32s(k[0]), s.splat_u32s(k[1]));
            for c in c.iter_mut() {
                let (lo0, hi0) = s.widening_mul_u32s(m0, c[0]);
                let (lo1, hi1) = s.widening_mul_u32s(m1, c[2]);
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

    /// Fills `run` (`G`·4·lanes elements from quad `quad`, sharing its high word) with the
    /// draws of [`DropoutKey::blocks`], in element order.
    #[inline(always)]
    fn fill_groups<S: pulp::Simd, const G: usize>(
        &self,
        s: S,
        quad: u64,
        lane_index: S::u32s,
        run: &mut [f32],
    ) {
        let lanes = std::mem::size_of::<S::u32s>() / 4;
        for (group, run) in self
            .blocks::<S, G>(s, quad, lane_index)
            .into_iter()
            .zip(run.chunks_exact_mut(4 * lanes))
        {
            // Lane b of vector j is element 4·b + j.
            let mut by_output = [[0.0f32; MAX_LANES]; 4];
            for (row, r) in by_output.iter_mut().zip(group) {
                // SAFETY: a row holds MAX_LANES >= lanes f32, and `S::f32s` is `lanes`
                // plain f32 (pulp's vectors are `Pod`); the write is unaligned.
                unsafe {
                    std::ptr::write_unaligned(row.as_mut_ptr() as *mut S::f32s, to_unit_lanes(s, r))
                };
            }
            for (b, slots) in run.chunks_exact_mut(4).enumerate() {
                for (j, slot) in slots.iter_mut().enumerate() {
                    *slot = by_output[j][b];
                }
            }
        }
    }
}

/// The most u32 lanes of a SIMD vector that [`fill_uniform_with`] handles (AVX-512).
const MAX_LANES: usize = 16;

/// [`to_unit`] on vectors: `(r >> 8)·2^-24` exactly, from two 12-bit halves (each turned
/// into a float by the 2^23 trick: the bits of 2^23 + n are 0x4B00_0000 | n), since the
/// SIMD layer has no integer-to-float conversion.
#[inline(always)]
fn to_unit_lanes<S: pulp::Simd>(s: S, r: S::u32s) -> S::f32s {
    let high = small_to_float(s, s.wrapping_dyn_shr_u32s(r, s.splat_u32s(20)));
    let low = small_to_float(
        s,
        s.and_u32s(
            s.wrapping_dyn_shr_u32s(r, s.splat_u32s(8)),
            s.splat_u32s(0xfff),
        ),
    );
    let n = s.add_f32s(s.mul_f32s(high, s.splat_f32s(4096.0)), low);
    s.mul_f32s(n, s.splat_f32s(INV_2_24))
}

/// Integers below 2^23 as floats, exactly.
#[inline(always)]
fn small_to_float<S: pulp::Simd>(s: S, n: S::u32s) -> S::f32s {
    const TWO_23: f32 = 8_388_608.0;
    let biased = s.or_u32s(n, s.splat_u32s(TWO_23.to_bits()));
    s.sub_f32s(s.transmute_f32s_u32s(biased), s.splat_f32s(TWO_23))
}

/// The top 24 bits of `r` as an exact float in [0, 1).
#[inline(always)]
fn to_unit(r: u32) -> f32 {
    (r >> 8) as f32 * INV_2_24
}

/// The uniform draw in [0, 1) of `element` under `key`: a multiple of 2^-24, identical to
/// `dropout_uniform` in `shaders/philox.wgsl` (for elements below 2^32).
pub fn uniform(key: &DropoutKey, element: u64) -> f32 {
    to_unit(key.block(element / 4)[(element % 4) as usize])
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

/// Whether dropout with drop probability `p` keeps `element`: its draw is at least `p`.
///
/// `p <= 0` keeps everything and `p > 1 - 2^-24` drops everything (no draw reaches 1.0).
pub fn keep(key: &DropoutKey, element: u64, p: f32) -> bool {
    uniform(key, element) >= p
}

/// Writes the draws of elements `first_element .. first_element + out.len()` into `out`, equal
/// to [`uniform`] element by element but with one Philox call per four elements, as many
/// calls at once as the CPU has SIMD lanes.
#[inline]
pub fn fill_uniform(key: &DropoutKey, first_element: u64, out: &mut [f32]) {
    crate::backend::cpu::simd::run(FillUniform {
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
    const LANE_INDEX: [u32; MAX_LANES] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
    let lanes = std::mem::size_of::<S::u32s>() / 4;
    assert!(lanes <= MAX_LANES, "a SIMD width beyond {MAX_LANES} lanes");
    let lane_index = s.partial_load_u32s(&LANE_INDEX[..lanes]);
    // Walk the output in groups aligned to multiples of 4 in element space, so each Philox
    // block is computed once; the first and last groups may be partial.
    let mut element = first_element;
    let mut rest = out;
    while !rest.is_empty() {
        let quad = element / 4;
        // Whole runs of quads that share their high word go through SIMD, two groups of
        // `lanes` quads at a time where there are that many.
        let shares_high_word = |n: usize| (quad as u32).checked_add(n as u32 - 1).is_some();
        if element % 4 == 0 && rest.len() >= 8 * lanes && shares_high_word(2 * lanes) {
            let (run, tail) = rest.split_at_mut(8 * lanes);
            key.fill_groups::<S, 2>(s, quad, lane_index, run);
            rest = tail;
            element = element.wrapping_add(8 * lanes as u64);
            continue;
        }
        if element % 4 == 0 && rest.len() >= 4 * lanes && shares_high_word(lanes) {
            let (run, tail) = rest.split_at_mut(4 * lanes);
            key.fill_groups::<S, 1>(s, quad, lane_index, run);
            rest = tail;
            element = element.wrapping_add(4 * lanes as u64);
            continue;
        }
        let lane = (element % 4) as usize;
        let take = (4 - lane).min(rest.len());
        let block = key.block(quad);
        let (head, tail) = rest.split_at_mut(take);
        for (slot, r) in head.iter_mut().zip(&block[lane..lane + take]) {
            *slot = to_unit(*r);
        }
        rest = tail;
        // Wrapping: a slice that ends exactly at element 2^64 must not panic here.
        element = element.wrapping_add(take as u64);
    }
}
