//! The JIT back end: a `cranelift_jit::JITModule` whose code and constant
//! data share one reserved arena (`ArenaMemoryProvider`), so the 32-bit
//! PC-relative references from code to weights always reach.

use cranelift_jit::{ArenaMemoryProvider, JITBuilder, JITModule};

use super::{CodegenError, Lowered, Options, lower, target};
use crate::ir::{Params, Verified};

/// Compiles a verified graph into a finalized JIT module.
pub fn compile(
    verified: Verified<'_>,
    params: &Params,
    options: &Options,
) -> Result<(JITModule, Lowered), CodegenError> {
    if options.target != target::TargetCpu::Host {
        return Err(CodegenError::Target(format!(
            "the JIT compiles for this machine, not for target CPU `{}` (compile an object file for it)",
            options.target.name()
        )));
    }
    let isa = target::host_isa(false)?;
    let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    // Weights plus code; reserving address space is cheap (PROT_NONE).
    let weights: usize = params.tensors.values().map(|t| t.data.len()).sum();
    let reserve = (64 << 20) + 8 * weights;
    let arena = ArenaMemoryProvider::new_with_size(reserve)
        .map_err(|e| CodegenError::Target(format!("cannot reserve JIT memory: {e}")))?;
    builder.memory_provider(Box::new(arena));
    let mut module = JITModule::new(builder);
    let name = crate::codegen::object::c_name(&verified.graph().name);
    let lowered = lower(&mut module, verified, params, options, &name, true)?;
    module.finalize_definitions()?;
    Ok((module, lowered))
}
