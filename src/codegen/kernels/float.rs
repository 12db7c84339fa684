//! Real-valued convolution and dense layers (the stem and the classifier).
//!
//! Channels-last, vectorised over output channels: a register tile of `nr`
//! output pixels × 16 output channels (four `f32x4` accumulators per pixel)
//! walks the receptive field in the interpreter's order (input channel,
//! then kernel row, then column), reading input offsets from a table and
//! broadcasting one input value per pixel. Products and sums are separate
//! `fmul`/`fadd` in that order, so results equal the interpreter's bit for
//! bit.

use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::Variable;

use crate::codegen::CodegenError;
use crate::codegen::emit::{Fx, mem};
use crate::codegen::plan::FloatConv;

/// Stores the first `lanes` lanes of `v` at `addr + off`.
pub fn store_lanes(fx: &mut Fx, v: Value, addr: Value, off: i64, lanes: usize) {
    if lanes == 4 {
        fx.store(v, addr, off);
    } else {
        for l in 0..lanes {
            let e = fx.b.ins().extractlane(v, l as u8);
            fx.store(e, addr, off + 4 * l as i64);
        }
    }
}

/// Emits the step; returns its number of work units (pixel tiles).
pub fn emit(
    fx: &mut Fx,
    f: &FloatConv,
    src_off: usize,
    dst_off: usize,
) -> Result<usize, CodegenError> {
    let [kh, kw] = f.k;
    let [sh, sw] = f.s;
    let [dh, dw] = f.d;
    let [oh, ow] = f.out;
    let pixels = oh * ow;
    let nr = f.nr;
    let tiles = pixels.div_ceil(nr);
    let g_n = f.groups;
    let cg = f.c / g_n;
    let og = f.o / g_n;
    let nb = og.div_ceil(16);
    let kk = cg * kh * kw;

    let mut pix = Vec::with_capacity(tiles * nr);
    for p in 0..tiles * nr {
        let q = p.min(pixels - 1);
        let (i, j) = (q / ow, q % ow);
        pix.push(((i * sh * f.wp + j * sw) * f.c * 4) as i32);
    }
    let mut ktab = Vec::with_capacity(kk);
    for c in 0..cg {
        for u in 0..kh {
            for v in 0..kw {
                ktab.push((((u * dh) * f.wp + v * dw) * f.c * 4 + 4 * c) as i32);
            }
        }
    }
    let mut w = Vec::with_capacity(g_n * nb * kk * 16);
    for g in 0..g_n {
        for blk in 0..nb {
            for k in 0..kk {
                for lane in 0..16 {
                    let ol = blk * 16 + lane;
                    w.push(if ol < og {
                        f.w[(g * og + ol) * kk + k]
                    } else {
                        0.0
                    });
                }
            }
        }
    }
    let mut bias = f.bias.clone().unwrap_or_default();
    bias.resize(f.o + 16, 0.0);
    let pix_tab = fx.i32_data(&pix)?;
    let ktab = fx.i32_data(&ktab)?;
    let wtab = fx.f32_data(&w)?;
    let btab = fx.f32_data(&bias)?;
    let src = fx.arena_at(src_off);
    let dst = fx.arena_at(dst_off);
    let has_bias = f.bias.is_some();
    let wblock = (kk * 64) as i64;

    fx.for_units(|fx, tile| {
        let p0 = fx.mul_imm(tile, nr as i64);
        let mut bases = Vec::new();
        let mut outs = Vec::new();
        for k in 0..nr {
            let e = fx.add_imm(p0, k as i64);
            let e4 = fx.mul_imm(e, 4);
            let ea = fx.b.ins().iadd(pix_tab, e4);
            let off = fx.b.ins().sload32(mem(), ea, 0);
            bases.push(fx.b.ins().iadd(src, off));
            let ob = fx.mul_imm(e, (4 * f.o) as i64);
            outs.push(fx.b.ins().iadd(dst, ob));
        }
        fx.for_n(g_n, |fx, g| {
            let goff = fx.mul_imm(g, (cg * 4) as i64);
            let gbases: Vec<Value> = bases.iter().map(|&x| fx.b.ins().iadd(x, goff)).collect();
            let o_g = fx.mul_imm(g, og as i64);
            let wg = fx.mul_imm(g, nb as i64 * wblock);
            let wg = fx.b.ins().iadd(wtab, wg);
            let block = |fx: &mut Fx, blk: Value, valid: usize| -> Result<(), CodegenError> {
                let ob = fx.mul_imm(blk, 16);
                let o0 = fx.b.ins().iadd(o_g, ob);
                let wb = fx.mul_imm(blk, wblock);
                let wb = fx.b.ins().iadd(wg, wb);
                let zero = {
                    let z = fx.fc(0.0);
                    fx.b.ins().splat(types::F32X4, z)
                };
                let nvec = valid.div_ceil(4);
                let acc: Vec<Vec<Variable>> = (0..nr)
                    .map(|_| (0..nvec).map(|_| fx.var(types::F32X4, zero)).collect())
                    .collect();
                fx.for_n(kk, |fx, k| {
                    let k4 = fx.mul_imm(k, 4);
                    let ka = fx.b.ins().iadd(ktab, k4);
                    let off = fx.b.ins().sload32(mem(), ka, 0);
                    let k64 = fx.mul_imm(k, 64);
                    let wk = fx.b.ins().iadd(wb, k64);
                    let wv: Vec<Value> = (0..nvec)
                        .map(|r| {
                            fx.b.ins().load(
                                types::F32X4,
                                MemFlagsData::trusted(),
                                wk,
                                (16 * r) as i32,
                            )
                        })
                        .collect();
                    for p in 0..nr {
                        let a = fx.b.ins().iadd(gbases[p], off);
                        let x = fx.load(types::F32, a, 0);
                        let x = fx.b.ins().splat(types::F32X4, x);
                        for r in 0..nvec {
                            let prod = fx.b.ins().fmul(wv[r], x);
                            let s = fx.b.use_var(acc[p][r]);
                            let s = fx.b.ins().fadd(s, prod);
                            fx.b.def_var(acc[p][r], s);
                        }
                    }
                    Ok(())
                })?;
                let o4 = fx.mul_imm(o0, 4);
                let bt = fx.b.ins().iadd(btab, o4);
                for p in 0..nr {
                    let addr = fx.b.ins().iadd(outs[p], o4);
                    for r in 0..nvec {
                        let mut y = fx.b.use_var(acc[p][r]);
                        if has_bias {
                            let bv = fx.b.ins().load(
                                types::F32X4,
                                MemFlagsData::trusted(),
                                bt,
                                (16 * r) as i32,
                            );
                            y = fx.b.ins().fadd(bv, y);
                        }
                        store_lanes(fx, y, addr, (16 * r) as i64, (valid - 4 * r).min(4));
                    }
                }
                Ok(())
            };
            let full = og / 16;
            fx.for_n(full, |fx, blk| block(fx, blk, 16))?;
            if !og.is_multiple_of(16) {
                let last = fx.ic(full as i64);
                block(fx, last, og % 16)?;
            }
            Ok(())
        })
    })?;
    Ok(tiles)
}
