//! Every WGSL file and every generated variant parses and validates with naga: no GPU needed.

use signflow::backend::gpu::shaders::Kernel;

#[test]
fn every_shader_variant_validates() {
    let kernels = Kernel::all();
    assert!(kernels.len() > 30, "the variant list looks truncated");
    for kernel in kernels {
        let name = kernel.name();
        let source = kernel.source();
        assert!(
            !source.contains("//!"),
            "{name}: a placeholder was not substituted"
        );
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(&source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name} does not validate:\n{}", e.emit_to_string(&source)));
    }
}

#[test]
fn variant_names_are_unique() {
    let mut names: Vec<String> = Kernel::all().iter().map(Kernel::name).collect();
    let count = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count);
}
