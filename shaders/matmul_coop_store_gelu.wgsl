// Epilogue of matmul_coop.wgsl for the feed-forward layer: the pre-activation (bias included)
// for the backward pass, and C = GELU of it (of the f32 value, before either is rounded).
@group(0) @binding(5) var<storage, read_write> pre: array<CT>;

fn store(i: u32, v: f32) {
    pre[p.pre_offset + i - p.c_offset] = CT(v);
    c[i] = CT(gelu(v));
}
