// Workgroup reductions by a fixed tree (the same bits on every run, no atomics): a function
// and the workgroup array it uses, concatenated in front of the kernels that reduce
// (layernorm.wgsl, cross_entropy.wgsl, optim.wgsl). Those declare `override WG`, a power of
// two of at most MAX_WG, which src/backend/gpu/shaders.rs generates in front of this file
// from the elementwise workgroup size (src/backend/gpu/kernel_config.rs never exceeds it).

var<workgroup> tree_partial: array<vec2<f32>, MAX_WG>;

// The sum (or with take_max, the maximum) of v over the workgroup, componentwise; every
// invocation gets the result. Every invocation of the workgroup must call it.
fn workgroup_reduce(lid: u32, v: vec2<f32>, take_max: bool) -> vec2<f32> {
    tree_partial[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            if take_max {
                tree_partial[lid] = max(tree_partial[lid], tree_partial[lid + stride]);
            } else {
                tree_partial[lid] += tree_partial[lid + stride];
            }
        }
        workgroupBarrier();
    }
    let total = tree_partial[0];
    // A later call must not overwrite the result before every invocation has read it.
    workgroupBarrier();
    return total;
}
