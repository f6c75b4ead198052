// Epilogue: C as computed (bias included); store2 writes a pair of C's elements (the first
// even) as one word.
fn store(i: u32, v: f32) {
    c_st(i, v);
}

fn store2(i: u32, v: vec2<f32>) {
    c_st2(i, v);
}
