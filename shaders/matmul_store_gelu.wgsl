// Epilogue for the feed-forward layer: the pre-activation (bias included) for the backward
// pass, and C = GELU of it, in one pass.
@group(0) @binding(5) var<storage, read_write> pre: array<f32>;

fn store(i: u32, v: f32) {
    pre[p.pre_offset + i - p.c_offset] = v;
    c[i] = gelu(v);
}
