// Epilogue for the feed-forward layer: the pre-activation (bias included) for the backward
// pass, and C = GELU of it as stored (rounded to its dtype by `kept`, generated per dtype),
// which is what the backward pass will read, in one pass. Element i of C is element
// i - c_offset + pre_offset of the pre-activation (both views start on an even element, so a
// pair starting on an even element of C does so in the pre-activation too).

fn store(i: u32, v: f32) {
    let x = kept(v);
    pre_st(p.pre_offset + i - p.c_offset, x);
    c_st(i, gelu(x));
}

fn store2(i: u32, v: vec2<f32>) {
    let x = vec2<f32>(kept(v.x), kept(v.y));
    pre_st2(p.pre_offset + i - p.c_offset, x);
    c_st2(i, vec2<f32>(gelu(x.x), gelu(x.y)));
}
