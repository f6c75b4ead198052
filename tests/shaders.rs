//! Every kernel variant the GPU backend can compile, checked with naga (no GPU needed): it
//! parses and validates; its entry points are exactly those its launchers dispatch, each using
//! exactly the bindings the launcher binds; and it translates to the shading language of
//! every wgpu backend that can run it.

use naga::back::{glsl, hlsl, msl, spv};
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Module, ShaderStage};
use signflow::backend::gpu::shaders::Kernel;

fn parsed(kernel: &Kernel) -> (String, Module) {
    let name = kernel.name();
    let source = kernel.source();
    assert!(
        !source.contains("//!"),
        "{name}: a placeholder was not substituted"
    );
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(&source)));
    (source, module)
}

fn validated(kernel: &Kernel) -> (Module, ModuleInfo) {
    let (source, module) = parsed(kernel);
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .unwrap_or_else(|e| {
            let name = kernel.name();
            panic!("{name} does not validate:\n{}", e.emit_to_string(&source))
        });
    (module, info)
}

#[test]
fn every_shader_variant_validates() {
    let kernels = Kernel::all();
    assert!(kernels.len() > 30, "the variant list looks truncated");
    for kernel in kernels {
        validated(&kernel);
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

/// The bindings (group 0) entry point `index` of `module` uses, sorted: what wgpu puts in the
/// pipeline's bind group layout, and so exactly what a dispatch must bind.
fn used_bindings(module: &Module, info: &ModuleInfo, index: usize) -> Vec<u32> {
    let uses = info.get_entry_point(index);
    let mut used: Vec<u32> = module
        .global_variables
        .iter()
        .filter(|(handle, _)| !uses[*handle].is_empty())
        .filter_map(|(_, var)| var.binding.as_ref())
        .map(|b| {
            assert_eq!(b.group, 0, "every binding is in group 0");
            b.binding
        })
        .collect();
    used.sort_unstable();
    used
}

#[test]
fn launchers_bind_exactly_what_each_entry_point_uses() {
    for kernel in Kernel::all() {
        let name = kernel.name();
        let (module, info) = validated(&kernel);
        let mut in_source: Vec<&str> = module
            .entry_points
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let mut launched: Vec<&str> = kernel.entries().iter().map(|e| e.name).collect();
        in_source.sort_unstable();
        launched.sort_unstable();
        assert_eq!(
            in_source, launched,
            "{name}: the source's entry points and those its launchers dispatch differ"
        );
        let params = module.global_variables.iter().find_map(|(_, var)| {
            let at_zero = var.binding.as_ref().is_some_and(|b| b.binding == 0);
            at_zero.then_some(var)
        });
        let params = params.unwrap_or_else(|| panic!("{name}: nothing at binding 0"));
        assert_eq!(params.space, AddressSpace::Uniform, "{name}: binding 0");
        assert_eq!(
            module.types[params.ty].name.as_deref(),
            Some("Params"),
            "{name}: binding 0 is not the generated Params block"
        );
        for entry in kernel.entries() {
            let index = module
                .entry_points
                .iter()
                .position(|e| e.name == entry.name)
                .unwrap_or_else(|| panic!("{name} has no entry point {}", entry.name));
            assert_eq!(module.entry_points[index].stage, ShaderStage::Compute);
            let mut bound = vec![0];
            bound.extend_from_slice(entry.bindings);
            bound.sort_unstable();
            assert_eq!(
                used_bindings(&module, &info, index),
                bound,
                "{name}::{}: the bindings it uses (left) and those its launcher binds (right)",
                entry.name
            );
        }
    }
}

/// A shading language wgpu translates WGSL into, with the options it uses there (the oldest
/// language version it supports, its default bounds checks, workgroup memory left
/// uninitialized as the backend's pipelines ask).
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Vulkan.
    SpirV,
    /// Metal.
    Msl,
    /// DX12.
    Hlsl,
    /// GL (OpenGL ES 3.1, the first with compute shaders).
    Glsl,
}

const TARGETS: [Target; 4] = [Target::SpirV, Target::Msl, Target::Hlsl, Target::Glsl];

fn bounds_checks(policy: BoundsCheckPolicy) -> BoundsCheckPolicies {
    BoundsCheckPolicies {
        index: policy,
        buffer: policy,
        image_load: policy,
        binding_array: BoundsCheckPolicy::Unchecked,
    }
}

impl Target {
    /// Which targets can run a kernel: GL has no SHADER_F16 in wgpu, and cooperative matrices
    /// exist only on Vulkan and Metal.
    fn runs(self, source: &str) -> bool {
        match self {
            Target::SpirV | Target::Msl => true,
            Target::Hlsl => !source.contains("enable wgpu_cooperative_matrix"),
            Target::Glsl => {
                !source.contains("enable f16") && !source.contains("enable wgpu_cooperative_matrix")
            }
        }
    }

    fn capabilities(self) -> Capabilities {
        match self {
            Target::SpirV => spv::supported_capabilities(),
            Target::Msl => msl::supported_capabilities(),
            Target::Hlsl => hlsl::supported_capabilities(),
            Target::Glsl => glsl::supported_capabilities(),
        }
    }

    /// `module` (overrides resolved for `entry`) in this language, or the error.
    fn translate(self, module: &Module, info: &ModuleInfo, entry: &str) -> Result<(), String> {
        let stage = ShaderStage::Compute;
        match self {
            Target::SpirV => {
                let options = spv::Options {
                    bounds_check_policies: bounds_checks(BoundsCheckPolicy::Restrict),
                    zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::None,
                    ..Default::default()
                };
                let pipeline = spv::PipelineOptions {
                    shader_stage: stage,
                    entry_point: entry.into(),
                };
                spv::write_vec(module, info, &options, Some(&pipeline))
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Target::Msl => {
                // wgpu's Metal backend offers cooperative matrices from MSL 2.3 on.
                let coop = module
                    .types
                    .iter()
                    .any(|(_, t)| matches!(t.inner, naga::TypeInner::CooperativeMatrix { .. }));
                let options = msl::Options {
                    lang_version: if coop { (2, 3) } else { (2, 0) },
                    bounds_check_policies: bounds_checks(BoundsCheckPolicy::Restrict),
                    zero_initialize_workgroup_memory: false,
                    ..Default::default()
                };
                let pipeline = msl::PipelineOptions {
                    entry_point: Some((stage, entry.into())),
                    ..Default::default()
                };
                msl::write_string(module, info, &options, &pipeline)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Target::Hlsl => {
                let options = hlsl::Options {
                    zero_initialize_workgroup_memory: false,
                    ..Default::default()
                };
                let pipeline = hlsl::PipelineOptions {
                    entry_point: Some((stage, entry.into())),
                };
                let mut out = String::new();
                hlsl::Writer::new(&mut out, &options, &pipeline)
                    .write(module, info, None)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Target::Glsl => {
                let options = glsl::Options {
                    zero_initialize_workgroup_memory: false,
                    ..Default::default()
                };
                let pipeline = glsl::PipelineOptions {
                    shader_stage: stage,
                    entry_point: entry.into(),
                    multiview: None,
                };
                let mut out = String::new();
                glsl::Writer::new(
                    &mut out,
                    module,
                    info,
                    &options,
                    &pipeline,
                    bounds_checks(BoundsCheckPolicy::Unchecked),
                )
                .and_then(|mut w| w.write())
                .map(drop)
                .map_err(|e| e.to_string())
            }
        }
    }
}

/// The translation of every entry point of `kernel` to `target`, as wgpu does it: validated
/// with the target's capabilities, the override constants resolved for that entry point.
fn translate(kernel: &Kernel, source: &str, module: &Module, target: Target) -> Result<(), String> {
    let info = Validator::new(ValidationFlags::all(), target.capabilities())
        .validate(module)
        .map_err(|e| format!("validation: {}", e.emit_to_string(source)))?;
    let constants: naga::back::PipelineConstants = kernel
        .constants()
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    for entry in &module.entry_points {
        let (resolved, resolved_info) = naga::back::pipeline_constants::process_overrides(
            module,
            &info,
            Some((ShaderStage::Compute, &entry.name)),
            &constants,
        )
        .map_err(|e| format!("{}: overrides: {e}", entry.name))?;
        target
            .translate(&resolved, &resolved_info, &entry.name)
            .map_err(|e| format!("{}: {e}", entry.name))?;
    }
    Ok(())
}

#[test]
fn every_variant_translates_for_every_backend_that_runs_it() {
    let mut failures = Vec::new();
    for kernel in Kernel::all() {
        let (source, module) = parsed(&kernel);
        for target in TARGETS.into_iter().filter(|t| t.runs(&source)) {
            if let Err(e) = translate(&kernel, &source, &module, target) {
                failures.push(format!("{} to {target:?}: {e}", kernel.name()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
