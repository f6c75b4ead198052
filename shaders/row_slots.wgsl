// Word slots of a row, for the kernels that give a workgroup a row (layernorm.wgsl,
// cross_entropy.wgsl): the row's elements [k, k + n) in slots of PER elements (PER is
// generated in front: 1 for f32, 2 for 16-bit storage), one 32-bit word each, so that a 16-bit
// operand is read and written a whole word at a time. k counts from the operands' offsets,
// which are even for 16-bit views, so that every operand of the row has the same word
// boundaries. With an odd row length the row's first or last element may share its word with
// the neighbouring row, which another workgroup writes: that slot holds one element (pair is
// false) and is stored with the atomic-safe NAME_st; a slot holding both elements of its word
// stores the word whole.

struct Slot {
    // The slot's first element.
    i: u32,
    // Whether element i + 1 is the slot's too (then i is even); never with PER = 1.
    pair: bool,
}

// The number of slots of the row [k, k + n).
fn slot_count(k: u32, n: u32) -> u32 {
    return (k + n + PER - 1u) / PER - k / PER;
}

// Slot t < slot_count(k, n) of the row [k, k + n).
fn slot(k: u32, n: u32, t: u32) -> Slot {
    if PER == 1u {
        return Slot(k + t, false);
    }
    let word = (k / 2u + t) * 2u;
    return Slot(max(word, k), word >= k && word + 2u <= k + n);
}
