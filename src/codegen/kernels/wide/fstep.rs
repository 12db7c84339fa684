//! The Cranelift step of a real-valued layer on the `avx512` path: one
//! work unit per output row (or per channel part of a row, for layers of
//! few rows); per row and group, one call of the FMA micro-kernel
//! ([`super::fconv`]) per full pixel tile and one of its tail variant for
//! the row's last `ow mod nr` pixels.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{FuncRef, InstBuilder, SigRef, Value, types};

use super::fconv::{self, EpiOp, FTile, Spec};
use crate::codegen::CodegenError;
use crate::codegen::emit::Fx;
use crate::codegen::plan::{FloatConv, Post};

fn kernel(fx: &mut Fx, spec: &Spec) -> Result<FuncRef, CodegenError> {
    let code = fconv::assemble(spec)?;
    let listing = format!("{spec:?}\n{}", super::disassemble(&code));
    fx.code(&code, 5, listing)
}

/// Emits the step; returns its number of work units (output rows).
pub fn emit(
    fx: &mut Fx,
    f: &FloatConv,
    tile: FTile,
    src_off: usize,
    dst_off: usize,
) -> Result<usize, CodegenError> {
    let [kh, kw] = f.k;
    let [sh, sw] = f.s;
    let [dh, dw] = f.d;
    let [oh, ow] = f.out;
    let groups = f.groups;
    let (cg, og) = (f.c / groups, f.o / groups);
    let blocks = og.div_ceil(16);
    let steps = cg * kh * kw;
    let too_large = || CodegenError::Internal(format!("avx512 FMA kernel: layer too large {f:?}"));
    let px = |bytes: usize| i32::try_from(bytes).map_err(|_| too_large());
    // Steps in (u, v, c) order: neighbouring channels are neighbours in
    // memory. The weights follow the same order.
    let mut offs = Vec::with_capacity(steps);
    let mut order = Vec::with_capacity(steps);
    for u in 0..kh {
        for v in 0..kw {
            for c in 0..cg {
                offs.push(px(((u * dh) * f.wp + v * dw) * f.c * 4 + 4 * c)?);
                order.push((c * kh + u) * kw + v);
            }
        }
    }
    let w: Vec<f32> = (0..f.o)
        .flat_map(|o| order.iter().map(move |&k| (o, k)))
        .map(|(o, k)| f.w[o * steps + k])
        .collect();
    // The epilogue's tables, each padded so that a partial last block
    // reads inside it: the bias, then the fused ops' (in the
    // interpreter's operation order).
    let padded = f.o + 16;
    let mut tables: Vec<f32> = Vec::new();
    let mut ops = Vec::new();
    let mut table = |v: &[f32]| -> u8 {
        let t = (tables.len() / padded) as u8;
        tables.extend_from_slice(v);
        tables.resize((t as usize + 1) * padded, 0.0);
        t
    };
    if let Some(b) = &f.bias {
        ops.push(EpiOp::Add(table(b)));
    }
    for post in &f.post {
        match post {
            Post::BatchNorm {
                gamma,
                mean,
                std,
                beta,
            } => {
                ops.push(EpiOp::Sub(table(mean)));
                ops.push(EpiOp::Mul(table(gamma)));
                ops.push(EpiOp::Div(table(std)));
                ops.push(EpiOp::Add(table(beta)));
            }
            Post::Affine { mul, bias } => {
                ops.push(EpiOp::Mul(table(mul)));
                ops.push(EpiOp::Add(table(bias)));
            }
            Post::PRelu(slope) => ops.push(EpiOp::PRelu(table(slope))),
        }
    }
    if tables.len() / padded > usize::from(u8::MAX) {
        return Err(too_large());
    }
    let table_stride = px(4 * padded)?;
    if f.bits && groups != 1 {
        return Err(CodegenError::Internal(format!(
            "avx512 FMA kernel: packed sign output of a grouped layer {f:?}"
        )));
    }
    // Bytes of one output pixel: f32 values or packed words.
    let pixel_out = if f.bits {
        8 * f.o.div_ceil(64)
    } else {
        4 * f.o
    };
    let main = Spec {
        tile,
        blocks,
        steps,
        pixel_in: px(sw * f.c * 4)?,
        pixel_out: px(pixel_out)?,
        ops,
        table_stride,
        last_valid: if og.is_multiple_of(16) { 16 } else { og % 16 },
        bits: f.bits,
    };
    let weights = fx.f32_data(&fconv::tile_weights(&w, groups, og, &main))?;
    // Few rows (a dense layer's one, the last stage's 7): split the one
    // group's channels into parts, each unit one part of one row; the
    // parts are whole m-tiles of the layout above, so a part's weights
    // start `b0 · steps · 64` bytes in. A packed output keeps whole rows
    // (its tail words are zeroed after the last block).
    let (parts, per) = if groups == 1 && !f.bits {
        super::channel_parts(oh, blocks, tile.mr, false)
    } else {
        (1, blocks)
    };
    let last_blocks = blocks - (parts - 1) * per;
    let part_spec = |blocks: usize, last_valid: usize| Spec {
        blocks,
        last_valid,
        ..main.clone()
    };
    let (every, last) = if parts > 1 {
        (part_spec(per, 16), part_spec(last_blocks, main.last_valid))
    } else {
        (main.clone(), main.clone())
    };
    let kernels = |fx: &mut Fx, spec: &Spec| -> Result<RowKernels, CodegenError> {
        let tail = ow % tile.nr;
        let tail_spec = Spec {
            tile: FTile {
                mr: tile.mr,
                nr: tail,
            },
            ..spec.clone()
        };
        Ok(RowKernels {
            main: kernel(fx, spec)?,
            tail: if tail > 0 {
                Some(kernel(fx, &tail_spec)?)
            } else {
                None
            },
        })
    };
    let every_fn = kernels(fx, &every)?;
    let last_fn = if last != every {
        Some(kernels(fx, &last)?)
    } else {
        None
    };
    let offs = fx.i32_data(&offs)?;
    let bias = if tables.is_empty() {
        fx.ic(0)
    } else {
        fx.f32_data(&tables)?
    };
    let full = ow / tile.nr;
    let group_bytes = (blocks * steps * 64) as i64;
    let tile_in = (tile.nr * sw * f.c * 4) as i64;
    let tile_out = (tile.nr * pixel_out) as i64;
    let src = fx.arena_at(src_off);
    let dst = fx.arena_at(dst_off);
    fx.for_units(|fx, unit| {
        let (row, part) = if parts > 1 {
            let row = fx.b.ins().udiv_imm_u(unit, parts as i64);
            (row, fx.b.ins().urem_imm_u(unit, parts as i64))
        } else {
            (unit, fx.ic(0))
        };
        let r_in = fx.mul_imm(row, (sh * f.wp * f.c * 4) as i64);
        let r_in = fx.b.ins().iadd(src, r_in);
        let r_out = fx.mul_imm(row, (ow * pixel_out) as i64);
        let r_out = fx.b.ins().iadd(dst, r_out);
        // The part's kernels: the last part's own where its blocks differ.
        let pick = |fx: &mut Fx, every: FuncRef, last: Option<FuncRef>| -> Callee {
            match last {
                None => Callee::Direct(every),
                Some(last) => {
                    let is_last = fx.b.ins().icmp_imm_u(IntCC::Equal, part, parts as i64 - 1);
                    let a = fx.b.ins().func_addr(types::I64, every);
                    let b = fx.b.ins().func_addr(types::I64, last);
                    let sig = fx.b.func.dfg.ext_funcs[every].signature;
                    Callee::Indirect(sig, fx.b.ins().select(is_last, b, a))
                }
            }
        };
        let main_fn = pick(fx, every_fn.main, last_fn.map(|k| k.main));
        let tail_fn = every_fn
            .tail
            .map(|t| pick(fx, t, last_fn.and_then(|k| k.tail)));
        let p_c = fx.mul_imm(part, (per * 16 * 4) as i64);
        let p_w = fx.mul_imm(part, (per * steps * 64) as i64);
        fx.for_n(groups, |fx, g| {
            let cin = fx.mul_imm(g, (cg * 4) as i64);
            let g_in = fx.b.ins().iadd(r_in, cin);
            // (A packed output or a split has one group: `g` is 0.)
            let cout = fx.mul_imm(g, (og * 4) as i64);
            let cout = fx.b.ins().iadd(cout, p_c);
            let g_out = fx.b.ins().iadd(r_out, cout);
            let g_bias = fx.b.ins().iadd(bias, cout);
            let wg = fx.mul_imm(g, group_bytes);
            let wg = fx.b.ins().iadd(wg, p_w);
            let g_w = fx.b.ins().iadd(weights, wg);
            let call = |fx: &mut Fx, k: Callee, t: Value| {
                let ti = fx.mul_imm(t, tile_in);
                let input = fx.b.ins().iadd(g_in, ti);
                let to = fx.mul_imm(t, tile_out);
                let out = fx.b.ins().iadd(g_out, to);
                let args = [input, g_w, offs, out, g_bias];
                match k {
                    Callee::Direct(f) => fx.b.ins().call(f, &args),
                    Callee::Indirect(sig, addr) => fx.b.ins().call_indirect(sig, addr, &args),
                };
            };
            fx.for_n(full, |fx, t| {
                call(fx, main_fn, t);
                Ok(())
            })?;
            if let Some(k) = tail_fn {
                let t = fx.ic(full as i64);
                call(fx, k, t);
            }
            Ok(())
        })
    })?;
    Ok(oh * parts)
}

/// The kernels of one row: full pixel tiles, and the row's last `ow mod
/// nr` pixels.
#[derive(Clone, Copy)]
struct RowKernels {
    main: FuncRef,
    tail: Option<FuncRef>,
}

/// A kernel to call: known, or chosen at run time by the unit's part.
#[derive(Clone, Copy)]
enum Callee {
    Direct(FuncRef),
    Indirect(SigRef, Value),
}
