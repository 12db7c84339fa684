//! Code generation: a verified graph to specialised native code through
//! Cranelift.
//!
//! [`plan`](plan::plan) turns the graph into kernel steps over a planned
//! activation arena; [`lower`] emits one Cranelift function per step (shapes,
//! strides, loop bounds, weights and thresholds are constants) into any
//! [`cranelift_module::Module`], so the same code path serves the JIT
//! ([`jit`]) and object files ([`object`]). An optional entry function
//! `NAME_run(in..., out..., batch, scratch)` runs all steps over a batch, with
//! `NAME_scratch_bytes(batch)` telling the caller how much scratch to pass.

pub mod emit;
pub mod jit;
pub mod kernels;
pub mod object;
pub mod plan;
pub mod target;

use cranelift_codegen::Context;
use cranelift_codegen::ir::{
    AbiParam, InstBuilder, StackSlotData, StackSlotKind, UserFuncName, condcodes::IntCC, types,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, FuncId, Linkage, Module};

use crate::ir::{Params, Verified};
use plan::{Plan, PlanOptions, Step};

/// Why a model cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// The host ISA cannot be set up.
    #[error("target: {0}")]
    Target(String),
    /// A parameter is missing or misshapen.
    #[error("parameter `{name}`: {message}")]
    Param {
        /// Its full name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The parameters fail the validation every engine shares.
    #[error("{0}")]
    Params(crate::ir::param_check::ParamError),
    /// Cranelift rejected a function or data object.
    #[error("cranelift: {0}")]
    Module(String),
    /// A training-only op (a gradient, a loss, batch statistics): inference
    /// code is generated for models, not for their training graphs.
    #[error(
        "`{node}` (`{op}`) belongs to a training graph; the inference compiler takes the model itself"
    )]
    Training {
        /// The node.
        node: String,
        /// Its op.
        op: &'static str,
    },
    /// A bug in onebit's code generator.
    #[error("internal code generation error: {0}")]
    Internal(String),
}

impl From<cranelift_module::ModuleError> for CodegenError {
    fn from(e: cranelift_module::ModuleError) -> CodegenError {
        CodegenError::Module(format!("{e:?}"))
    }
}

/// Which popcount the binary kernels use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Popcount {
    /// `popcnt.i8x16` where the host has `vpopcntb`, else the scalar path.
    #[default]
    Auto,
    /// Always `popcnt.i8x16` (a `pshufb` lookup without BITALG).
    Vector,
    /// Always scalar `popcnt.i64`.
    Scalar,
}

/// Compilation options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Worker threads for [`crate::runtime::CompiledModel::run`] (1 = none).
    pub threads: usize,
    /// Popcount path of the binary kernels.
    pub popcount: Popcount,
    /// Fuse batchnorm and sign into their producers.
    pub fuse: bool,
    /// Keep the Cranelift IR text of every function.
    pub emit_clif: bool,
    /// Keep the disassembly of every function.
    pub disasm: bool,
    /// Kernel path of the binary layers (`portable`, `avx512`; by default
    /// `ONEBIT_KERNELS` or the best the target runs).
    pub kernels: target::Kernels,
    /// The CPU to compile for: the host, or for an object file a named
    /// x86-64 CPU (the JIT only compiles for the host).
    pub target: target::TargetCpu,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            threads: 1,
            popcount: Popcount::Auto,
            fuse: true,
            emit_clif: false,
            disasm: false,
            kernels: target::Kernels::Auto,
            target: target::TargetCpu::Host,
        }
    }
}

/// One emitted step.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// The function.
    pub func: FuncId,
    /// Work units (the runtime splits `0..units` between threads).
    pub units: usize,
    /// The graph node it comes from.
    pub node: String,
    /// The kernel kind.
    pub kind: &'static str,
    /// Disassembly, with [`Options::disasm`].
    pub disasm: Option<String>,
}

/// What [`lower`] produced.
#[derive(Debug)]
pub struct Lowered {
    /// The plan.
    pub plan: Plan,
    /// The step functions, in order.
    pub steps: Vec<StepInfo>,
    /// `NAME_run` and `NAME_scratch_bytes`, if requested.
    pub entry: Option<(FuncId, FuncId)>,
    /// Cranelift IR text, with [`Options::emit_clif`].
    pub clif: String,
    /// The kernel path the binary layers use.
    pub path: target::KernelPath,
}

/// The signature of a step: `(arena, io, lo, hi)`.
fn step_signature<M: Module>(module: &M) -> cranelift_codegen::ir::Signature {
    let mut sig = module.make_signature();
    for _ in 0..4 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig
}

/// Lowers a verified graph into `module`. Symbols are prefixed by `name`;
/// with `entry`, also emits the exported `NAME_run` and `NAME_scratch_bytes`.
pub fn lower<M: Module>(
    module: &mut M,
    verified: Verified<'_>,
    params: &Params,
    options: &Options,
    name: &str,
    entry: bool,
) -> Result<Lowered, CodegenError> {
    // The interpreter's validation, so that every engine accepts the same
    // parameters.
    crate::ir::param_check::validate(verified.graph(), params).map_err(CodegenError::Params)?;
    let graph = verified.graph();
    if graph.node_ids().any(|id| graph.node(id).op.projection()) {
        // PCNN's projection is a training form: compile what
        // `fold_projection` makes of it, the same signs and scales in the
        // form the kernels take (see that pass).
        let (mut graph, mut params) = (graph.clone(), params.clone());
        let fold = crate::passes::PassSelection::parse("fold_projection")
            .map_err(|e| CodegenError::Internal(e.to_string()))?;
        crate::passes::optimize(
            &mut graph,
            &mut params,
            &fold,
            &Default::default(),
            |_, _| {},
        )
        .map_err(|e| CodegenError::Internal(e.to_string()))?;
        let verified =
            crate::ir::verify::verify(&graph).map_err(|e| CodegenError::Internal(e.to_string()))?;
        return lower(module, verified, &params, options, name, entry);
    }
    // The module's ISA is the one built for `options.target`.
    let host = options.target.features(module.isa());
    let path = target::KernelPath::resolve(options.kernels, &host)?;
    if path.binary_isa().is_some()
        && module.isa().default_call_conv() != cranelift_codegen::isa::CallConv::SystemV
    {
        return Err(CodegenError::Target(format!(
            "kernel path `{}` needs the System V calling convention, not {}",
            path.name(),
            module.isa().default_call_conv()
        )));
    }
    let scalar = match options.popcount {
        Popcount::Auto => !host.vector_popcnt,
        Popcount::Vector => false,
        Popcount::Scalar => true,
    };
    let plan = plan::plan(
        verified,
        params,
        PlanOptions {
            fuse: options.fuse,
            scalar_popcount: scalar,
            wide: path.binary_isa(),
            fma: path.fma(),
        },
    )?;
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let mut steps = Vec::with_capacity(plan.steps.len());
    let mut clif = String::new();
    let sig = step_signature(module);
    let tfc = module.target_config();
    for (i, (node, step)) in plan.steps.iter().enumerate() {
        let fname = format!("{name}_step{i}");
        let func = module.declare_function(&fname, Linkage::Local, &sig)?;
        ctx.func.signature = sig.clone();
        ctx.func.name = UserFuncName::user(0, func.as_u32());
        let units;
        let listings = {
            let mut sink = ModuleSink {
                module: &mut *module,
                prefix: fname.clone(),
                listings: Vec::new(),
            };
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let block = b.create_block();
            b.append_block_params_for_function_params(block);
            b.switch_to_block(block);
            let p = b.block_params(block);
            let params4 = [p[0], p[1], p[2], p[3]];
            let mut fx = emit::Fx::new(b, params4, &mut sink);
            units = emit_step(&mut fx, &plan, step)?;
            fx.b.ins().return_(&[]);
            fx.b.seal_all_blocks();
            fx.b.finalize(tfc);
            sink.listings
        };
        if options.emit_clif {
            clif.push_str(&format!(
                "; step {i}: {} `{node}`\n{}\n",
                step.kind(),
                ctx.func.display()
            ));
        }
        ctx.set_disasm(options.disasm);
        module
            .define_function(func, &mut ctx)
            .map_err(|e| CodegenError::Module(format!("step {i} (`{node}`): {e:?}")))?;
        let disasm = if options.disasm {
            ctx.compiled_code()
                .and_then(|c| c.vcode.clone())
                .map(|mut text| {
                    for (name, listing) in &listings {
                        text.push_str(&format!("\n; machine-code kernel {name}\n{listing}"));
                    }
                    text
                })
        } else {
            None
        };
        module.clear_context(&mut ctx);
        steps.push(StepInfo {
            func,
            units,
            node: node.clone(),
            kind: step.kind(),
            disasm,
        });
    }
    let entry = if entry {
        Some(emit_entry(
            module, &mut ctx, &mut fctx, &plan, &steps, name, &mut clif, options,
        )?)
    } else {
        None
    };
    Ok(Lowered {
        plan,
        steps,
        entry,
        clif,
        path,
    })
}

/// The module seen from a step function: its constant data and its
/// machine-code kernels, named after the step.
struct ModuleSink<'m, M: Module> {
    module: &'m mut M,
    prefix: String,
    /// (name, disassembly) of the kernels defined for this step.
    listings: Vec<(String, String)>,
}

impl<M: Module> emit::Sink for ModuleSink<'_, M> {
    fn data(
        &mut self,
        bytes: Box<[u8]>,
        func: &mut cranelift_codegen::ir::Function,
    ) -> Result<cranelift_codegen::ir::GlobalValue, CodegenError> {
        let id = self.module.declare_anonymous_data(false, false)?;
        let mut d = DataDescription::new();
        d.define(bytes);
        d.set_align(64);
        self.module.define_data(id, &d)?;
        Ok(self.module.declare_data_in_func(id, func))
    }

    fn code(
        &mut self,
        bytes: &[u8],
        params: usize,
        listing: String,
        func: &mut cranelift_codegen::ir::Function,
    ) -> Result<cranelift_codegen::ir::FuncRef, CodegenError> {
        let name = format!("{}_kernel{}", self.prefix, self.listings.len());
        let mut sig = self.module.make_signature();
        for _ in 0..params {
            sig.params.push(AbiParam::new(types::I64));
        }
        let id = self.module.declare_function(&name, Linkage::Local, &sig)?;
        self.module.define_function_bytes(id, 64, bytes, &[])?;
        self.listings.push((name, listing));
        Ok(self.module.declare_func_in_func(id, func))
    }
}

fn emit_step(fx: &mut emit::Fx, plan: &Plan, step: &Step) -> Result<usize, CodegenError> {
    let off = |b: usize| plan.offsets[b];
    use kernels::{binary, elementwise, float, misc, pool};
    match step {
        Step::Input { io, dst, rows } => misc::input(fx, *io, dst, off(dst.buf), *rows),
        Step::Output { io, src } => misc::output(fx, *io, src, off(src.buf)),
        Step::Pad {
            src,
            dst,
            hw,
            pad,
            regroup,
        } => misc::pad(fx, src, off(src.buf), off(*dst), *hw, *pad, *regroup),
        Step::BinConv(b) => binary::emit(fx, b, off(b.src), off(b.dst), b.residual.map(off)),
        Step::FloatConv(f) => match f.fma {
            Some(tile) => kernels::wide::fstep::emit(fx, f, tile, off(f.src), off(f.dst)),
            None => float::emit(fx, f, off(f.src), off(f.dst)),
        },
        Step::Elementwise {
            srcs,
            dst,
            pos,
            c,
            op,
            pack,
            keep,
            padded,
        } => {
            let s: Vec<usize> = srcs.iter().map(|&b| off(b)).collect();
            let keep = keep.map(off);
            elementwise::elementwise(fx, &s, off(*dst), *pos, *c, op, *pack, keep, *padded)
        }
        Step::Unpack { src, dst } => misc::unpack(fx, src, off(src.buf), off(*dst)),
        Step::Pool {
            src,
            hw,
            pad,
            c,
            kind,
            k,
            s,
            out,
            dst,
        } => pool::pool(fx, off(*src), *hw, *pad, *c, *kind, *k, *s, *out, off(*dst)),
        Step::GlobalAvgPool { src, dst } => pool::global_avgpool(fx, src, off(src.buf), off(*dst)),
        Step::Flatten { src, dst } => misc::flatten(fx, src, off(src.buf), off(*dst)),
        Step::Concat { srcs, dst } => {
            let s: Vec<_> = srcs.iter().map(|t| (t.clone(), off(t.buf))).collect();
            misc::concat(fx, &s, dst, off(dst.buf))
        }
        Step::GatherChannels { src, map, dst } => {
            misc::gather_channels(fx, src, off(src.buf), map, dst, off(dst.buf))
        }
    }
}

/// Bytes of one sample of each model input, then output (f32, C order).
pub fn io_sample_bytes(plan: &Plan) -> Vec<usize> {
    plan.inputs
        .iter()
        .chain(&plan.outputs)
        .map(|(_, d)| 4 * d.iter().product::<usize>())
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn emit_entry<M: Module>(
    module: &mut M,
    ctx: &mut Context,
    fctx: &mut FunctionBuilderContext,
    plan: &Plan,
    steps: &[StepInfo],
    name: &str,
    clif: &mut String,
    options: &Options,
) -> Result<(FuncId, FuncId), CodegenError> {
    let nio = plan.inputs.len() + plan.outputs.len();
    let tfc = module.target_config();
    // NAME_scratch_bytes(batch) -> size_t
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(types::I64));
    sig.returns.push(AbiParam::new(types::I64));
    let scratch_fn =
        module.declare_function(&format!("{name}_scratch_bytes"), Linkage::Export, &sig)?;
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, scratch_fn.as_u32());
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let v = b.ins().iconst(types::I64, (plan.arena_bytes + 64) as i64);
        b.ins().return_(&[v]);
        b.seal_all_blocks();
        b.finalize(tfc);
    }
    if options.emit_clif {
        clif.push_str(&format!("{}\n", ctx.func.display()));
    }
    module.define_function(scratch_fn, ctx)?;
    module.clear_context(ctx);

    // NAME_run(in..., out..., batch, scratch) -> int
    let mut sig = module.make_signature();
    for _ in 0..nio + 2 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig.returns.push(AbiParam::new(types::I32));
    let run_fn = module.declare_function(&format!("{name}_run"), Linkage::Export, &sig)?;
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, run_fn.as_u32());
    let refs: Vec<_> = steps
        .iter()
        .map(|s| module.declare_func_in_func(s.func, &mut ctx.func))
        .collect();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        let p = b.block_params(block).to_vec();
        let batch = p[nio];
        let scratch = b.ins().iadd_imm_s(p[nio + 1], 63);
        let arena = b.ins().band_imm_s(scratch, !63);
        let slot = b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (8 * nio.max(1)) as u32,
            3,
        ));
        let table = b.ins().stack_addr(types::I64, slot, 0);
        let header = b.create_block();
        let body = b.create_block();
        let exit = b.create_block();
        let n = b.append_block_param(header, types::I64);
        let zero = b.ins().iconst(types::I64, 0);
        b.ins().jump(header, &[zero.into()]);
        b.switch_to_block(header);
        let go = b.ins().icmp(IntCC::UnsignedLessThan, n, batch);
        b.ins().brif(go, body, &[], exit, &[]);
        b.switch_to_block(body);
        for (k, bytes) in io_sample_bytes(plan).into_iter().enumerate() {
            let off = b.ins().imul_imm_s(n, bytes as i64);
            let ptr = b.ins().iadd(p[k], off);
            b.ins().stack_store(types::I64, ptr, slot, (8 * k) as i32);
        }
        for (s, &fref) in steps.iter().zip(&refs) {
            let lo = b.ins().iconst(types::I64, 0);
            let hi = b.ins().iconst(types::I64, s.units as i64);
            b.ins().call(fref, &[arena, table, lo, hi]);
        }
        let next = b.ins().iadd_imm_s(n, 1);
        b.ins().jump(header, &[next.into()]);
        b.switch_to_block(exit);
        let ok = b.ins().iconst(types::I32, 0);
        b.ins().return_(&[ok]);
        b.seal_all_blocks();
        b.finalize(tfc);
    }
    if options.emit_clif {
        clif.push_str(&format!("{}\n", ctx.func.display()));
    }
    module.define_function(run_fn, ctx)?;
    module.clear_context(ctx);
    Ok((run_fn, scratch_fn))
}
