// Epilogue: C as computed (bias included).
fn store(i: u32, v: f32) {
    c[i] = v;
}
