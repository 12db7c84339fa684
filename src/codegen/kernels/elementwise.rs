//! Elementwise ops (with fused sign packing), one position per work unit
//! and, within one, over channels in `f32x4` vectors with a scalar tail;
//! per-channel constants come from tables. Sign packing compares four
//! channels at a time (`fcmp ult x, 0`, true for negatives and NaN) and
//! gathers the lanes with `vhigh_bits`: sixteen channels per `pmovmskb`
//! after two saturating narrows (full words), four per `movmskps` in the
//! tail.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};

use crate::codegen::CodegenError;
use crate::codegen::emit::{Fx, le};
use crate::codegen::plan::{EwOp, PaddedRows};

/// A splat (for vectors) or the scalar itself.
fn bcast(fx: &mut Fx, ty: Type, x: Value) -> Value {
    if ty.is_vector() {
        fx.b.ins().splat(ty, x)
    } else {
        x
    }
}

pub(super) fn fconst(fx: &mut Fx, ty: Type, v: f32) -> Value {
    let c = fx.fc(v);
    bcast(fx, ty, c)
}

/// `c ? x : y` lane by lane; `c` is an fcmp result of the same shape.
fn choose(fx: &mut Fx, ty: Type, c: Value, x: Value, y: Value) -> Value {
    if ty.is_vector() {
        let m = fx.b.ins().bitcast(ty, le(), c);
        fx.b.ins().bitselect(m, x, y)
    } else {
        fx.b.ins().select(c, x, y)
    }
}

/// `x > y ? x : y` lane by lane (a NaN or equal operands give `y`), the
/// interpreter's `max` step. Written as `y < x` so that x64 lowers the
/// vector form to one `maxps`, whose definition this is.
pub(super) fn max_gt(fx: &mut Fx, ty: Type, x: Value, y: Value) -> Value {
    let lt = fx.b.ins().fcmp(FloatCC::LessThan, y, x);
    choose(fx, ty, lt, x, y)
}

/// Result of an elementwise op on one vector or scalar.
enum EwVal {
    /// An f32 value.
    Val(Value),
    /// A mask, true where the packed result is −1.
    Minus(Value),
}

/// Evaluates `op` on operands `xs` (type `ty`) for channels from table
/// offset `ct` (bytes); `tabs` are the op's per-channel tables.
fn eval(
    fx: &mut Fx,
    op: &EwOp,
    ty: Type,
    xs: &[Value],
    tabs: &[Value],
    ct: Value,
    ct_imm: i64,
) -> EwVal {
    let ld = |fx: &mut Fx, i: usize| -> Value {
        let a = fx.b.ins().iadd(tabs[i], ct);
        fx.b.ins()
            .load(ty, MemFlagsData::trusted(), a, ct_imm as i32)
    };
    EwVal::Val(match op {
        EwOp::Copy => xs[0],
        EwOp::BatchNorm { .. } => {
            let (g, m, s, b) = (ld(fx, 0), ld(fx, 1), ld(fx, 2), ld(fx, 3));
            let y = fx.b.ins().fsub(xs[0], m);
            let y = fx.b.ins().fmul(g, y);
            let y = fx.b.ins().fdiv(y, s);
            fx.b.ins().fadd(y, b)
        }
        EwOp::PRelu(_) => {
            let a = ld(fx, 0);
            let z = fconst(fx, ty, 0.0);
            let ge = fx.b.ins().fcmp(FloatCC::GreaterThanOrEqual, xs[0], z);
            let ax = fx.b.ins().fmul(a, xs[0]);
            choose(fx, ty, ge, xs[0], ax)
        }
        EwOp::Relu => {
            let z = fconst(fx, ty, 0.0);
            max_gt(fx, ty, xs[0], z)
        }
        EwOp::HardTanh(lo, hi) => {
            let lo = fconst(fx, ty, *lo);
            let hi = fconst(fx, ty, *hi);
            let a = max_gt(fx, ty, xs[0], lo);
            let lt = fx.b.ins().fcmp(FloatCC::LessThan, a, hi);
            choose(fx, ty, lt, a, hi)
        }
        EwOp::Add => {
            let mut y = xs[0];
            for &x in &xs[1..] {
                y = fx.b.ins().fadd(y, x);
            }
            y
        }
        EwOp::Choose(w) => {
            let mut y = fconst(fx, ty, 0.0);
            for (&x, &wi) in xs.iter().zip(w) {
                let wv = fconst(fx, ty, wi);
                let p = fx.b.ins().fmul(wv, x);
                y = fx.b.ins().fadd(y, p);
            }
            y
        }
        EwOp::Zero => fconst(fx, ty, 0.0),
        EwOp::Affine(..) => {
            let (m, b) = (ld(fx, 0), ld(fx, 1));
            let y = fx.b.ins().fmul(m, xs[0]);
            fx.b.ins().fadd(y, b)
        }
        EwOp::Threshold(..) => {
            let (d, t) = (ld(fx, 0), ld(fx, 1));
            let y = fx.b.ins().fmul(d, xs[0]);
            let ge = fx.b.ins().fcmp(FloatCC::GreaterThanOrEqual, y, t);
            return EwVal::Minus(if ty.is_vector() {
                fx.b.ins().bnot(ge)
            } else {
                fx.b.ins().bxor_imm_s(ge, 1)
            });
        }
    })
}

fn tables(op: &EwOp) -> Vec<&Vec<f32>> {
    match op {
        EwOp::BatchNorm {
            gamma,
            mean,
            std,
            beta,
        } => vec![gamma, mean, std, beta],
        EwOp::PRelu(a) => vec![a],
        EwOp::Affine(m, b) | EwOp::Threshold(m, b) => vec![m, b],
        _ => vec![],
    }
}

/// Elementwise step; returns its units (positions, or rows when
/// `padded`). With `pack` the signs of the results are packed into `dst`
/// (zero-padded by `padded`, the border written too), and with `keep` the
/// f32 results are also stored there, from the same registers.
#[allow(clippy::too_many_arguments)]
pub fn elementwise(
    fx: &mut Fx,
    srcs: &[usize],
    dst: usize,
    pos: usize,
    c: usize,
    op: &EwOp,
    pack: bool,
    keep: Option<usize>,
    padded: Option<PaddedRows>,
) -> Result<usize, CodegenError> {
    let mut tabs = Vec::new();
    for t in tables(op) {
        let mut v = t.clone();
        v.resize(c + 4, 0.0);
        tabs.push(fx.f32_data(&v)?);
    }
    let srcs: Vec<Value> = srcs.iter().map(|&o| fx.arena_at(o)).collect();
    let dst = fx.arena_at(dst);
    let keep = keep.map(|k| fx.arena_at(k));
    let cw = c.div_ceil(64);
    let vec_ch = c / 4 * 4;
    // Position `p`, its packed bits (with `pack`) at `bits_out`.
    let position = |fx: &mut Fx, p: Value, bits_out: Value| -> Result<(), CodegenError> {
        let row = fx.mul_imm(p, (4 * c) as i64);
        let xs_base: Vec<Value> = srcs.iter().map(|&s| fx.b.ins().iadd(s, row)).collect();
        let kept = keep.map(|k| fx.b.ins().iadd(k, row));
        let zero = fx.ic(0);
        // One channel group starting at channel byte offset `cb` (+imm).
        let at = |fx: &mut Fx, ty: Type, cb: Value, imm: i64| -> EwVal {
            let xs: Vec<Value> = xs_base
                .iter()
                .map(|&b| {
                    let a = fx.b.ins().iadd(b, cb);
                    fx.b.ins()
                        .load(ty, MemFlagsData::trusted().with_notrap(), a, imm as i32)
                })
                .collect();
            let y = eval(fx, op, ty, &xs, &tabs, cb, imm);
            if let (Some(k), EwVal::Val(v)) = (kept, &y) {
                let a = fx.b.ins().iadd(k, cb);
                fx.store(*v, a, imm);
            }
            y
        };
        if !pack {
            let out = fx.mul_imm(p, (4 * c) as i64);
            let out = fx.b.ins().iadd(dst, out);
            fx.for_n(c / 4, |fx, q| {
                let cb = fx.mul_imm(q, 16);
                if let EwVal::Val(y) = at(fx, types::F32X4, cb, 0) {
                    let a = fx.b.ins().iadd(out, cb);
                    fx.store(y, a, 0);
                }
                Ok(())
            })?;
            for ch in vec_ch..c {
                if let EwVal::Val(y) = at(fx, types::F32, zero, 4 * ch as i64) {
                    fx.store(y, out, 4 * ch as i64);
                }
            }
            return Ok(());
        }
        let out = bits_out;
        let minus = |fx: &mut Fx, v: EwVal, ty: Type| -> Value {
            match v {
                EwVal::Minus(m) => m,
                EwVal::Val(y) => {
                    let z = fconst(fx, ty, 0.0);
                    fx.b.ins().fcmp(FloatCC::UnorderedOrLessThan, y, z)
                }
            }
        };
        // Words with 64 valid channels: a runtime loop of 16 vectors each.
        let full = c / 64;
        fx.for_n(full, |fx, wi| {
            let cb0 = fx.mul_imm(wi, 256);
            // Sixteen channels at a time: four lane masks narrowed (with
            // saturation, so all-ones stays all-ones) to one i8x16, whose
            // `pmovmskb` is 16 bits.
            let mut word = fx.ic(0);
            for g in 0..4 {
                let m: Vec<Value> = (0..4)
                    .map(|q| {
                        let v = at(fx, types::F32X4, cb0, 64 * g + 16 * q);
                        minus(fx, v, types::F32X4)
                    })
                    .collect();
                let lo = fx.b.ins().snarrow(m[0], m[1]);
                let hi = fx.b.ins().snarrow(m[2], m[3]);
                let m8 = fx.b.ins().snarrow(lo, hi);
                let bits = fx.b.ins().vhigh_bits(types::I64, m8);
                let bits = if g == 0 {
                    bits
                } else {
                    fx.b.ins().ishl_imm_s(bits, 16 * g)
                };
                word = fx.b.ins().bor(word, bits);
            }
            let wa = fx.mul_imm(wi, 8);
            let wa = fx.b.ins().iadd(out, wa);
            fx.store(word, wa, 0);
            Ok(())
        })?;
        if !c.is_multiple_of(64) {
            let base = full * 64;
            let mut word = fx.ic(0);
            let mut ch = base;
            while ch < c {
                let m = if ch + 4 <= c {
                    let v = at(fx, types::F32X4, zero, 4 * ch as i64);
                    let m = minus(fx, v, types::F32X4);
                    let m = fx.b.ins().vhigh_bits(types::I64, m);
                    ch += 4;
                    fx.b.ins().ishl_imm_s(m, (ch - 4 - base) as i64)
                } else {
                    let v = at(fx, types::F32, zero, 4 * ch as i64);
                    let m = minus(fx, v, types::F32);
                    let m = fx.b.ins().uextend(types::I64, m);
                    ch += 1;
                    fx.b.ins().ishl_imm_s(m, (ch - 1 - base) as i64)
                };
                word = fx.b.ins().bor(word, m);
            }
            fx.store(word, out, (8 * full) as i64);
        }
        Ok(())
    };
    let pixel = (8 * cw) as i64;
    let rows = match padded {
        None => {
            fx.for_units(|fx, p| {
                let out = fx.mul_imm(p, pixel);
                let out = fx.b.ins().iadd(dst, out);
                position(fx, p, out)
            })?;
            return Ok(pos);
        }
        Some(_) if !pack => {
            return Err(CodegenError::Internal(
                "a padded elementwise output without packing".into(),
            ));
        }
        Some(rows) => rows,
    };
    // Row `i` of the image into padded row `ph + i`: its left and right
    // border, and the top (bottom) border rows with the first (last) row.
    let [h, w] = rows.hw;
    let [ph, pw] = rows.pad;
    let wp = w + 2 * pw;
    fx.for_units(|fx, i| {
        for (at_row, first) in [(0, 0), (h - 1, ph + h)] {
            if ph > 0 {
                let hit = fx.b.ins().icmp_imm_s(IntCC::Equal, i, at_row as i64);
                fx.when(hit, |fx| {
                    let border = fx.add_imm(dst, first as i64 * wp as i64 * pixel);
                    fx.zero_bytes(border, ph * wp * pixel as usize);
                    Ok(())
                })?;
            }
        }
        let padded_row = fx.add_imm(i, ph as i64);
        let row = fx.mul_imm(padded_row, wp as i64 * pixel);
        let row = fx.b.ins().iadd(dst, row);
        fx.zero_bytes(row, pw * pixel as usize);
        let right = fx.add_imm(row, (pw + w) as i64 * pixel);
        fx.zero_bytes(right, pw * pixel as usize);
        let p0 = fx.mul_imm(i, w as i64);
        fx.for_n(w, |fx, j| {
            let p = fx.b.ins().iadd(p0, j);
            let out = fx.mul_imm(j, pixel);
            let out = fx.b.ins().iadd(row, out);
            let out = fx.add_imm(out, pw as i64 * pixel);
            position(fx, p, out)
        })
    })?;
    Ok(h)
}
