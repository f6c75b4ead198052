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

/// Philox4x32 round multipliers (Random123's PHILOX_M4x32_0 and _1).
pub(crate) const M0: u32 = 0xD251_1F53;
pub(crate) const M1: u32 = 0xCD9E_8D57;
/// Weyl-sequence key increments (golden ratio and sqrt(3) - 1, as 32-bit fractions).
pub(crate) const W0: u32 = 0x9E37_79B9;
pub(crate) const W1: u32 = 0xBB67_AE85;

/// 2^-16: turns a 16-bit draw into a float in [0, 1) exactly.
pub(crate) const INV_2_16: f32 = 1.0 / 65_536.0;

/// The high and low words of the full 64-bit product `a * b`.
#[inline(always)]
pub(crate) fn mulhilo(a: u32, b: u32) -> (u32, u32) {
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
    pub(crate) fn tile(&self, tile: u64) -> [u32; TILE as usize] {
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
