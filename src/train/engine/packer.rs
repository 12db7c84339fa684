//! Sign packing compiled by Cranelift: `±1`-valued (or any) f32 rows to the
//! IR's bit layout, specialised to the row length.
//!
//! A training step packs `sign(W)` of every XNOR layer once per step (the
//! latent weights change every step) and the ±1 inputs of those layers once
//! per run. The inference code generator packs the same way
//! (`codegen::kernels::misc`: `fcmp ult`-style compares of four lanes
//! gathered with `vhigh_bits`); here the row length `k` is a compile-time
//! constant, so a row is a fully unrolled run of 16 four-lane compares per
//! 64-bit word, and only the row loop is a loop.
//!
//! Bit `j % 64` of word `j / 64` is set where value `j` is negative
//! (`x < 0`: `-0.0` and NaN give 0, i.e. +1, as `sign` does); the unused
//! high bits of a row's last word are zero, so they cancel in the XOR of two
//! rows. [`super::xnor::pack_rows`], the plain loop, is the oracle and the
//! fallback where no JIT is available.

use std::collections::HashMap;

use cranelift_codegen::Context;
use cranelift_codegen::ir::{
    AbiParam, InstBuilder, MemFlagsData, UserFuncName, condcodes::FloatCC, condcodes::IntCC, types,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module};

use super::xnor::words;

/// Longest row compiled fully unrolled per word (longer rows loop over
/// words with one unrolled word per iteration).
const UNROLLED_WORDS: usize = 64;

/// `fn(src, rows, dst)`: packs `rows` rows of `k` f32 values.
type PackFn = unsafe extern "C" fn(*const f32, u64, *mut u64);

/// Pack kernels compiled for the row lengths an engine needs.
pub(super) struct Packer {
    /// Owns the code the function pointers point into.
    _module: JITModule,
    kernels: HashMap<usize, PackFn>,
}

// SAFETY: the module is only kept alive (never mutated after
// finalization); the kernels are pure functions of their arguments.
unsafe impl Send for Packer {}
unsafe impl Sync for Packer {}

impl Packer {
    /// Compiles one kernel per distinct row length in `lengths`; `None`
    /// when the host ISA cannot be set up (callers fall back to the plain
    /// loop).
    pub fn new(lengths: impl IntoIterator<Item = usize>) -> Option<Packer> {
        let isa = crate::codegen::target::host_isa(false).ok()?;
        let builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        let mut module = JITModule::new(builder);
        let mut ids = Vec::new();
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        let mut lengths: Vec<usize> = lengths.into_iter().filter(|&k| k > 0).collect();
        lengths.sort_unstable();
        lengths.dedup();
        for k in lengths {
            let ptr = module.target_config().pointer_type();
            let mut sig = module.make_signature();
            sig.params.push(AbiParam::new(ptr));
            sig.params.push(AbiParam::new(types::I64));
            sig.params.push(AbiParam::new(ptr));
            let id = module
                .declare_function(&format!("pack_rows_{k}"), Linkage::Local, &sig)
                .ok()?;
            ctx.func.signature = sig;
            ctx.func.name = UserFuncName::user(0, id.as_u32());
            build(&mut ctx, &mut fctx, module.target_config(), k);
            module.define_function(id, &mut ctx).ok()?;
            module.clear_context(&mut ctx);
            ids.push((k, id));
        }
        module.finalize_definitions().ok()?;
        let kernels = ids
            .into_iter()
            .map(|(k, id)| {
                let code = module.get_finalized_function(id);
                // SAFETY: `build` gave the function exactly `PackFn`'s
                // signature in the default call convention.
                (k, unsafe { std::mem::transmute::<*const u8, PackFn>(code) })
            })
            .collect();
        Some(Packer {
            _module: module,
            kernels,
        })
    }

    /// Packs the rows of `src` (`k` values each) into `dst` (`words(k)`
    /// words each); false if no kernel was compiled for `k` or the slices
    /// do not hold whole, matching rows (nothing is written then).
    pub fn pack(&self, src: &[f32], k: usize, dst: &mut [u64]) -> bool {
        let Some(f) = self.kernels.get(&k) else {
            return false;
        };
        let rows = src.len() / k;
        if rows * k != src.len() || dst.len() != rows * words(k) {
            return false;
        }
        // SAFETY: the kernel reads `rows·k` floats from `src` and writes
        // `rows·words(k)` words to `dst`, both checked just above.
        unsafe { f(src.as_ptr(), rows as u64, dst.as_mut_ptr()) };
        true
    }
}

/// Emits the kernel for rows of `k` values.
fn build(
    ctx: &mut Context,
    fctx: &mut FunctionBuilderContext,
    tfc: cranelift_codegen::isa::TargetFrontendConfig,
    k: usize,
) {
    let mem = MemFlagsData::trusted();
    let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
    let entry = b.create_block();
    let row_loop = b.create_block();
    let exit = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let [src, rows, dst] = b.block_params(entry)[..] else {
        unreachable!("three parameters declared")
    };
    let zero = b.ins().iconst(types::I64, 0);
    let none = b.ins().icmp(IntCC::Equal, rows, zero);
    b.ins().brif(
        none,
        exit,
        &[],
        row_loop,
        &[src.into(), dst.into(), zero.into()],
    );

    // One row per iteration: src and dst advance by a row.
    b.append_block_param(row_loop, types::I64);
    b.append_block_param(row_loop, types::I64);
    b.append_block_param(row_loop, types::I64);
    b.switch_to_block(row_loop);
    let [s, d, r] = b.block_params(row_loop)[..] else {
        unreachable!("three block parameters appended")
    };
    let full = k / 64;
    if full > UNROLLED_WORDS {
        // A word loop: one unrolled word per iteration.
        let word_loop = b.create_block();
        let tail = b.create_block();
        b.append_block_param(word_loop, types::I64);
        b.append_block_param(word_loop, types::I64);
        b.ins().jump(word_loop, &[s.into(), d.into()]);
        b.switch_to_block(word_loop);
        let [ws, wd] = b.block_params(word_loop)[..] else {
            unreachable!("two block parameters appended")
        };
        let bits = word(&mut b, ws, 0, 64, mem);
        b.ins().store(mem, bits, wd, 0);
        let ws2 = b.ins().iadd_imm_s(ws, 256);
        let wd2 = b.ins().iadd_imm_s(wd, 8);
        let end = b.ins().iadd_imm_s(s, (full * 256) as i64);
        let more = b.ins().icmp(IntCC::UnsignedLessThan, ws2, end);
        b.ins()
            .brif(more, word_loop, &[ws2.into(), wd2.into()], tail, &[]);
        b.seal_block(word_loop);
        b.switch_to_block(tail);
        b.seal_block(tail);
        if !k.is_multiple_of(64) {
            let bits = word(&mut b, s, (full * 256) as i32, k % 64, mem);
            b.ins().store(mem, bits, d, (full * 8) as i32);
        }
    } else {
        for w in 0..words(k) {
            let n = 64.min(k - w * 64);
            let bits = word(&mut b, s, (w * 256) as i32, n, mem);
            b.ins().store(mem, bits, d, (w * 8) as i32);
        }
    }
    let s2 = b.ins().iadd_imm_s(s, (k * 4) as i64);
    let d2 = b.ins().iadd_imm_s(d, (words(k) * 8) as i64);
    let r2 = b.ins().iadd_imm_s(r, 1);
    let more = b.ins().icmp(IntCC::UnsignedLessThan, r2, rows);
    b.ins().brif(
        more,
        row_loop,
        &[s2.into(), d2.into(), r2.into()],
        exit,
        &[],
    );
    b.seal_block(row_loop);

    b.switch_to_block(exit);
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(tfc);
}

/// The packed word of the `n` (≤ 64) values at `base + offset`.
fn word(
    b: &mut FunctionBuilder,
    base: cranelift_codegen::ir::Value,
    offset: i32,
    n: usize,
    mem: MemFlagsData,
) -> cranelift_codegen::ir::Value {
    let zero4 = {
        let z = b.ins().f32const(0.0);
        b.ins().splat(types::F32X4, z)
    };
    let zero = b.ins().f32const(0.0);
    let mut bits = b.ins().iconst(types::I64, 0);
    let quads = n / 4;
    for q in 0..quads {
        let v = b
            .ins()
            .load(types::F32X4, mem, base, offset + 16 * q as i32);
        let neg = b.ins().fcmp(FloatCC::LessThan, v, zero4);
        let lanes = b.ins().vhigh_bits(types::I64, neg);
        let lanes = if q == 0 {
            lanes
        } else {
            b.ins().ishl_imm_u(lanes, 4 * q as i64)
        };
        bits = b.ins().bor(bits, lanes);
    }
    for j in quads * 4..n {
        let v = b.ins().load(types::F32, mem, base, offset + 4 * j as i32);
        let neg = b.ins().fcmp(FloatCC::LessThan, v, zero);
        let bit = b.ins().uextend(types::I64, neg);
        let bit = b.ins().ishl_imm_u(bit, j as i64);
        bits = b.ins().bor(bits, bit);
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::super::xnor::pack_rows;
    use super::*;

    #[test]
    fn matches_the_plain_loop() {
        let lengths = [1, 3, 4, 63, 64, 65, 130, 784, 64 * 70 + 5, 64 * 70];
        let packer = Packer::new(lengths).expect("the host JIT works");
        let mut seed = 12345u64;
        for k in lengths {
            for rows in [0, 1, 5] {
                let src: Vec<f32> = (0..rows * k)
                    .map(|i| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        match (seed >> 60) % 8 {
                            0 => -0.0,
                            1 => f32::NAN,
                            2 => -f32::NAN,
                            3 => 0.0,
                            4 => f32::NEG_INFINITY,
                            _ => ((seed >> 20) as f32 / (1u64 << 44) as f32) - 0.5 + i as f32 * 0.0,
                        }
                    })
                    .collect();
                let mut want = vec![0u64; rows * words(k)];
                pack_rows(&src, k, &mut want);
                let mut got = vec![!0u64; rows * words(k)];
                assert!(packer.pack(&src, k, &mut got));
                assert_eq!(got, want, "k = {k}, rows = {rows}");
            }
        }
        assert!(
            !packer.pack(&[0.0; 8], 2, &mut [0; 4]),
            "no kernel for k = 2"
        );
        assert!(!packer.pack(&[0.0; 7], 3, &mut [0; 2]), "not whole rows");
    }
}
