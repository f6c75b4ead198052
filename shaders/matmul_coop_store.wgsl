// Epilogue of matmul_coop.wgsl: C as computed (bias included), in C's element type.
fn store(i: u32, v: f32) {
    c[i] = CT(v);
}
