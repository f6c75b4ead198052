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

/// Blocks computed side by side by [`DropoutKey::blocks`].
const BATCH: usize = 8;

impl DropoutKey {
    /// [`DropoutKey::block`] for `BATCH` consecutive quads, written lane by lane (each
    /// operation over all blocks at once) so that the compiler turns the rounds into vector
    /// instructions; the bits are the same as block by block.
    #[inline(always)]
    fn blocks(&self, first_quad: u64) -> [[u32; 4]; BATCH] {
        let mut c = [[0u32; BATCH]; 4];
        let mut k = [[0u32; BATCH]; 2];
        for b in 0..BATCH {
            let quad = first_quad.wrapping_add(b as u64);
            c[0][b] = quad as u32;
            c[1][b] = self.site;
            c[2][b] = self.step as u32;
            c[3][b] = (self.step >> 32) as u32;
            k[0][b] = self.seed as u32;
            k[1][b] = ((self.seed >> 32) as u32) ^ ((quad >> 32) as u32);
        }
        for i in 0..10 {
            if i > 0 {
                k[0].iter_mut().for_each(|k| *k = k.wrapping_add(W0));
                k[1].iter_mut().for_each(|k| *k = k.wrapping_add(W1));
            }
            let mut next = [[0u32; BATCH]; 4];
            for b in 0..BATCH {
                let p0 = M0 as u64 * c[0][b] as u64;
                let p1 = M1 as u64 * c[2][b] as u64;
                next[0][b] = ((p1 >> 32) as u32) ^ c[1][b] ^ k[0][b];
                next[1][b] = p1 as u32;
                next[2][b] = ((p0 >> 32) as u32) ^ c[3][b] ^ k[1][b];
                next[3][b] = p0 as u32;
            }
            c = next;
        }
        std::array::from_fn(|b| [c[0][b], c[1][b], c[2][b], c[3][b]])
    }
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
/// to [`uniform`] element by element but with one Philox call per four elements.
#[inline(always)]
pub fn fill_uniform(key: &DropoutKey, first_element: u64, out: &mut [f32]) {
    // Walk the output in groups aligned to multiples of 4 in element space, so each Philox
    // block is computed once; the first and last groups may be partial.
    let mut element = first_element;
    let mut rest = out;
    while !rest.is_empty() {
        // Whole runs of BATCH blocks go through the lane-parallel Philox.
        if element % 4 == 0 && rest.len() >= 4 * BATCH {
            let quad = element / 4;
            let (run, tail) = rest.split_at_mut(4 * BATCH);
            for (b, block) in key.blocks(quad).iter().enumerate() {
                for (slot, r) in run[4 * b..4 * b + 4].iter_mut().zip(block) {
                    *slot = to_unit(*r);
                }
            }
            rest = tail;
            element = element.wrapping_add(4 * BATCH as u64);
            continue;
        }
        let lane = (element % 4) as usize;
        let take = (4 - lane).min(rest.len());
        let block = key.block(element / 4);
        let (head, tail) = rest.split_at_mut(take);
        for (slot, r) in head.iter_mut().zip(&block[lane..lane + take]) {
            *slot = to_unit(*r);
        }
        rest = tail;
        // Wrapping: a slice that ends exactly at element 2^64 must not panic here.
        element = element.wrapping_add(take as u64);
    }
}
