//! The other kernels: layout conversions at the model boundary, padding,
//! elementwise ops (with fused sign packing), unpacking, pooling, global
//! average pooling, flatten and concat.
//!
//! Elementwise ops run over positions (the work units) and, within one,
//! over channels in `f32x4` vectors with a scalar tail; per-channel constants
//! come from tables. Sign packing compares four channels at a time
//! (`fcmp ult x, 0`, true for negatives and NaN) and gathers the lanes with
//! `vhigh_bits` (movmskps) into 64-bit words.

use cranelift_codegen::ir::{
    Endianness, InstBuilder, MemFlagsData, Type, Value, condcodes::FloatCC, types,
};

use crate::codegen::CodegenError;
use crate::codegen::emit::Fx;
use crate::codegen::plan::{EwOp, PoolKind, Tensor};
use crate::ir::DType;

fn le() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

/// A splat (for vectors) or the scalar itself.
fn bcast(fx: &mut Fx, ty: Type, x: Value) -> Value {
    if ty.is_vector() {
        fx.b.ins().splat(ty, x)
    } else {
        x
    }
}

fn fconst(fx: &mut Fx, ty: Type, v: f32) -> Value {
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
            let gt = fx.b.ins().fcmp(FloatCC::GreaterThan, xs[0], z);
            choose(fx, ty, gt, xs[0], z)
        }
        EwOp::HardTanh(lo, hi) => {
            let lo = fconst(fx, ty, *lo);
            let hi = fconst(fx, ty, *hi);
            let gt = fx.b.ins().fcmp(FloatCC::GreaterThan, xs[0], lo);
            let a = choose(fx, ty, gt, xs[0], lo);
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

/// Elementwise step; returns its units (positions).
#[allow(clippy::too_many_arguments)]
pub fn elementwise(
    fx: &mut Fx,
    srcs: &[usize],
    dst: usize,
    pos: usize,
    c: usize,
    op: &EwOp,
    pack: bool,
) -> Result<usize, CodegenError> {
    let mut tabs = Vec::new();
    for t in tables(op) {
        let mut v = t.clone();
        v.resize(c + 4, 0.0);
        tabs.push(fx.f32_data(&v)?);
    }
    let srcs: Vec<Value> = srcs.iter().map(|&o| fx.arena_at(o)).collect();
    let dst = fx.arena_at(dst);
    let cw = c.div_ceil(64);
    let vec_ch = c / 4 * 4;
    fx.for_units(|fx, p| {
        let row = fx.mul_imm(p, (4 * c) as i64);
        let xs_base: Vec<Value> = srcs.iter().map(|&s| fx.b.ins().iadd(s, row)).collect();
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
            eval(fx, op, ty, &xs, &tabs, cb, imm)
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
        let out = fx.mul_imm(p, (8 * cw) as i64);
        let out = fx.b.ins().iadd(dst, out);
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
            let mut word = fx.ic(0);
            for q in 0..16 {
                let v = at(fx, types::F32X4, cb0, 16 * q);
                let m = minus(fx, v, types::F32X4);
                let m = fx.b.ins().vhigh_bits(types::I64, m);
                let m = fx.b.ins().ishl_imm_s(m, 4 * q);
                word = fx.b.ins().bor(word, m);
            }
            let wa = fx.mul_imm(wi, 8);
            let wa = fx.b.ins().iadd(out, wa);
            fx.store(word, wa, 0);
            Ok(())
        })?;
        if c % 64 != 0 {
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
    })?;
    Ok(pos)
}

/// Reads bit `c` of the packed position at `addr`: 1 means −1.
fn bit_at(fx: &mut Fx, addr: Value, c: Value) -> Value {
    let w = fx.b.ins().ushr_imm_s(c, 6);
    let w = fx.mul_imm(w, 8);
    let a = fx.b.ins().iadd(addr, w);
    let word = fx.load(types::I64, a, 0);
    let sh = fx.b.ins().band_imm_s(c, 63);
    let b = fx.b.ins().ushr(word, sh);
    fx.b.ins().band_imm_s(b, 1)
}

/// ±1.0 from a bit (1 → −1.0).
fn bit_value(fx: &mut Fx, bit: Value) -> Value {
    let two = fx.b.ins().ishl_imm_s(bit, 1);
    let one = fx.ic(1);
    let v = fx.b.ins().isub(one, two);
    fx.b.ins().fcvt_from_sint(types::F32, v)
}

/// ORs bit `m` (0/1) into bit index `m_idx` of the words at `addr`.
fn or_bit(fx: &mut Fx, addr: Value, idx: Value, bit: Value) {
    let w = fx.b.ins().ushr_imm_s(idx, 6);
    let w = fx.mul_imm(w, 8);
    let a = fx.b.ins().iadd(addr, w);
    let sh = fx.b.ins().band_imm_s(idx, 63);
    let b = fx.b.ins().ishl(bit, sh);
    let old = fx.load(types::I64, a, 0);
    let new = fx.b.ins().bor(old, b);
    fx.store(new, a, 0);
}

/// Transposes channels-last `[P][C]` to C order `[C][P]` (f32, or bits to
/// ±1.0 when `to_f32`, or bits to bits); `dst` is a pointer.
fn to_c_order(
    fx: &mut Fx,
    src: Value,
    t: &Tensor,
    dst: Value,
    bits_out: bool,
) -> Result<(), CodegenError> {
    let (c, p) = (t.c, t.pos);
    if bits_out {
        fx.zero_bytes(dst, 8 * (c * p).div_ceil(64));
    }
    fx.for_n(c, |fx, ch| {
        fx.for_n(p, |fx, q| {
            let m = fx.mul_imm(ch, p as i64);
            let m = fx.b.ins().iadd(m, q);
            match t.dtype {
                DType::F32 => {
                    let i = fx.mul_imm(q, c as i64);
                    let i = fx.b.ins().iadd(i, ch);
                    let i = fx.mul_imm(i, 4);
                    let a = fx.b.ins().iadd(src, i);
                    let v = fx.load(types::F32, a, 0);
                    let o = fx.mul_imm(m, 4);
                    let o = fx.b.ins().iadd(dst, o);
                    fx.store(v, o, 0);
                }
                DType::Bit => {
                    let i = fx.mul_imm(q, (8 * t.cw()) as i64);
                    let a = fx.b.ins().iadd(src, i);
                    let bit = bit_at(fx, a, ch);
                    if bits_out {
                        or_bit(fx, dst, m, bit);
                    } else {
                        let v = bit_value(fx, bit);
                        let o = fx.mul_imm(m, 4);
                        let o = fx.b.ins().iadd(dst, o);
                        fx.store(v, o, 0);
                    }
                }
            }
            Ok(())
        })
    })
}

/// Model input `io` (C order) to channels-last.
pub fn input(
    fx: &mut Fx,
    io: usize,
    dst_t: &Tensor,
    dst_off: usize,
) -> Result<usize, CodegenError> {
    let src = fx.io_ptr(io);
    let dst = fx.arena_at(dst_off);
    let (c, p) = (dst_t.c, dst_t.pos);
    fx.for_n(c, |fx, ch| {
        fx.for_n(p, |fx, q| {
            let i = fx.mul_imm(ch, p as i64);
            let i = fx.b.ins().iadd(i, q);
            let i = fx.mul_imm(i, 4);
            let a = fx.b.ins().iadd(src, i);
            let v = fx.load(types::F32, a, 0);
            let o = fx.mul_imm(q, c as i64);
            let o = fx.b.ins().iadd(o, ch);
            let o = fx.mul_imm(o, 4);
            let o = fx.b.ins().iadd(dst, o);
            fx.store(v, o, 0);
            Ok(())
        })
    })?;
    Ok(1)
}

/// A value to model output `io`.
pub fn output(
    fx: &mut Fx,
    io: usize,
    src_t: &Tensor,
    src_off: usize,
) -> Result<usize, CodegenError> {
    let dst = fx.io_ptr(io);
    let src = fx.arena_at(src_off);
    to_c_order(fx, src, src_t, dst, false)?;
    Ok(1)
}

/// Flatten of a multi-position value.
pub fn flatten(
    fx: &mut Fx,
    src_t: &Tensor,
    src_off: usize,
    dst_off: usize,
) -> Result<usize, CodegenError> {
    let src = fx.arena_at(src_off);
    let dst = fx.arena_at(dst_off);
    to_c_order(fx, src, src_t, dst, src_t.dtype == DType::Bit)?;
    Ok(1)
}

/// Bits to ±1.0, channels-last.
pub fn unpack(
    fx: &mut Fx,
    t: &Tensor,
    src_off: usize,
    dst_off: usize,
) -> Result<usize, CodegenError> {
    let src = fx.arena_at(src_off);
    let dst = fx.arena_at(dst_off);
    let (c, cw) = (t.c, t.cw());
    fx.for_units(|fx, q| {
        let i = fx.mul_imm(q, (8 * cw) as i64);
        let a = fx.b.ins().iadd(src, i);
        let o = fx.mul_imm(q, (4 * c) as i64);
        let o = fx.b.ins().iadd(dst, o);
        fx.for_n(c, |fx, ch| {
            let bit = bit_at(fx, a, ch);
            let v = bit_value(fx, bit);
            let oc = fx.mul_imm(ch, 4);
            let oc = fx.b.ins().iadd(o, oc);
            fx.store(v, oc, 0);
            Ok(())
        })
    })?;
    Ok(t.pos)
}

/// Copies into a padded buffer: f32 filled with `fill`, bits with zero (or
/// valid-bit ones) words, regrouped so group `g` starts at word `g·cwg`.
#[allow(clippy::too_many_arguments)]
pub fn pad(
    fx: &mut Fx,
    src_t: &Tensor,
    src_off: usize,
    dst_off: usize,
    hw: [usize; 2],
    padding: [usize; 2],
    fill: f32,
    regroup: (usize, usize, usize),
    pad_ones: bool,
) -> Result<usize, CodegenError> {
    let [h, w] = hw;
    let [ph, pw] = padding;
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let src = fx.arena_at(src_off);
    let dst = fx.arena_at(dst_off);
    match src_t.dtype {
        DType::F32 => {
            let c = src_t.c;
            let fv = fx.fc(fill);
            fx.for_n(hp * wp * c, |fx, i| {
                let o = fx.mul_imm(i, 4);
                let o = fx.b.ins().iadd(dst, o);
                fx.store(fv, o, 0);
                Ok(())
            })?;
            fx.for_n(h, |fx, r| {
                fx.for_n(w * c, |fx, e| {
                    let i = fx.mul_imm(r, (w * c) as i64);
                    let i = fx.b.ins().iadd(i, e);
                    let i = fx.mul_imm(i, 4);
                    let a = fx.b.ins().iadd(src, i);
                    let v = fx.load(types::F32, a, 0);
                    let o = fx.mul_imm(r, (wp * c * 4) as i64);
                    let o2 = fx.mul_imm(e, 4);
                    let o = fx.b.ins().iadd(o, o2);
                    let o = fx.b.ins().iadd(dst, o);
                    fx.store(v, o, ((ph * wp + pw) * c * 4) as i64);
                    Ok(())
                })
            })?;
        }
        DType::Bit => {
            let (groups, cg, cwg) = regroup;
            let cw = src_t.cw();
            let xw = groups * cwg;
            let valid = |g: usize, wi: usize| -> u64 {
                let n = cg.saturating_sub(64 * wi).min(64);
                let _ = g;
                if n == 64 { u64::MAX } else { (1u64 << n) - 1 }
            };
            let pad_words: Vec<u64> = (0..xw)
                .map(|k| if pad_ones { valid(k / cwg, k % cwg) } else { 0 })
                .collect();
            fx.for_n(hp * wp, |fx, px| {
                let o = fx.mul_imm(px, (8 * xw) as i64);
                let o = fx.b.ins().iadd(dst, o);
                for (k, &pwd) in pad_words.iter().enumerate() {
                    let v = fx.ic(pwd as i64);
                    fx.store(v, o, 8 * k as i64);
                }
                Ok(())
            })?;
            fx.for_n(h, |fx, r| {
                fx.for_n(w, |fx, col| {
                    let i = fx.mul_imm(r, w as i64);
                    let i = fx.b.ins().iadd(i, col);
                    let i = fx.mul_imm(i, (8 * cw) as i64);
                    let a = fx.b.ins().iadd(src, i);
                    let o = fx.mul_imm(r, (wp * xw * 8) as i64);
                    let o2 = fx.mul_imm(col, (xw * 8) as i64);
                    let o = fx.b.ins().iadd(o, o2);
                    let o = fx.b.ins().iadd(dst, o);
                    let base = ((ph * wp + pw) * xw * 8) as i64;
                    for g in 0..groups {
                        for wi in 0..cwg {
                            let bit = g * cg + 64 * wi;
                            let (q, s) = (bit / 64, bit % 64);
                            let mut v = fx.load(types::I64, a, (8 * q) as i64);
                            if s != 0 {
                                v = fx.b.ins().ushr_imm_s(v, s as i64);
                                if q + 1 < cw {
                                    let hi = fx.load(types::I64, a, (8 * q + 8) as i64);
                                    let hi = fx.b.ins().ishl_imm_s(hi, (64 - s) as i64);
                                    v = fx.b.ins().bor(v, hi);
                                }
                            }
                            let m = valid(g, wi);
                            if m != u64::MAX {
                                v = fx.b.ins().band_imm_s(v, m as i64);
                            }
                            fx.store(v, o, base + (8 * (g * cwg + wi)) as i64);
                        }
                    }
                    Ok(())
                })
            })?;
        }
    }
    Ok(1)
}

/// Pooling over a padded input; units are output rows.
#[allow(clippy::too_many_arguments)]
pub fn pool(
    fx: &mut Fx,
    src_off: usize,
    wp: usize,
    c: usize,
    kind: PoolKind,
    k: [usize; 2],
    s: [usize; 2],
    out: [usize; 2],
    dst_off: usize,
) -> Result<usize, CodegenError> {
    let src = fx.arena_at(src_off);
    let dst = fx.arena_at(dst_off);
    let [kh, kw] = k;
    let [sh, sw] = s;
    let ow = out[1];
    let area = (kh * kw) as f32;
    fx.for_units(|fx, i| {
        fx.for_n(ow, |fx, j| {
            let r0 = fx.mul_imm(i, sh as i64);
            let r0 = fx.mul_imm(r0, wp as i64);
            let c0 = fx.mul_imm(j, sw as i64);
            let px = fx.b.ins().iadd(r0, c0);
            let opx = fx.mul_imm(i, ow as i64);
            let opx = fx.b.ins().iadd(opx, j);
            if kind == PoolKind::MaxBits {
                let cw = c.div_ceil(64);
                let a = fx.mul_imm(px, (8 * cw) as i64);
                let a = fx.b.ins().iadd(src, a);
                let o = fx.mul_imm(opx, (8 * cw) as i64);
                let o = fx.b.ins().iadd(dst, o);
                for wi in 0..cw {
                    let mut acc: Option<Value> = None;
                    for u in 0..kh {
                        for v in 0..kw {
                            let off = (((u * wp + v) * cw + wi) * 8) as i64;
                            let x = fx.load(types::I64, a, off);
                            acc = Some(match acc {
                                None => x,
                                Some(y) => fx.b.ins().band(y, x),
                            });
                        }
                    }
                    if let Some(y) = acc {
                        fx.store(y, o, (8 * wi) as i64);
                    }
                }
                return Ok(());
            }
            let a = fx.mul_imm(px, (4 * c) as i64);
            let a = fx.b.ins().iadd(src, a);
            let o = fx.mul_imm(opx, (4 * c) as i64);
            let o = fx.b.ins().iadd(dst, o);
            let one = |fx: &mut Fx, ty: Type, cb: Value, imm: i64| {
                let ac = fx.b.ins().iadd(a, cb);
                let mut acc = fconst(
                    fx,
                    ty,
                    if kind == PoolKind::Max {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    },
                );
                for u in 0..kh {
                    for v in 0..kw {
                        let off = ((u * wp + v) * c * 4) as i64 + imm;
                        let x = fx.load(ty, ac, off);
                        acc = if kind == PoolKind::Max {
                            let gt = fx.b.ins().fcmp(FloatCC::GreaterThan, x, acc);
                            choose(fx, ty, gt, x, acc)
                        } else {
                            fx.b.ins().fadd(acc, x)
                        };
                    }
                }
                if kind == PoolKind::Avg {
                    let d = fconst(fx, ty, area);
                    acc = fx.b.ins().fdiv(acc, d);
                }
                let oc = fx.b.ins().iadd(o, cb);
                fx.store(acc, oc, imm);
            };
            fx.for_n(c / 4, |fx, q| {
                let cb = fx.mul_imm(q, 16);
                one(fx, types::F32X4, cb, 0);
                Ok(())
            })?;
            let zero = fx.ic(0);
            for ch in c / 4 * 4..c {
                one(fx, types::F32, zero, 4 * ch as i64);
            }
            Ok(())
        })
    })?;
    Ok(out[0])
}

/// Mean over positions, channels-last `[P][C]` to `[C]`.
pub fn global_avgpool(
    fx: &mut Fx,
    t: &Tensor,
    src_off: usize,
    dst_off: usize,
) -> Result<usize, CodegenError> {
    let src = fx.arena_at(src_off);
    let dst = fx.arena_at(dst_off);
    let (c, p) = (t.c, t.pos);
    let one = |fx: &mut Fx, ty: Type, cb: Value, imm: i64| -> Result<(), CodegenError> {
        let z = fconst(fx, ty, 0.0);
        let acc = fx.var(ty, z);
        let base = fx.b.ins().iadd(src, cb);
        fx.for_n(p, |fx, q| {
            let o = fx.mul_imm(q, (4 * c) as i64);
            let a = fx.b.ins().iadd(base, o);
            let x = fx.load(ty, a, imm);
            let s = fx.b.use_var(acc);
            let s = fx.b.ins().fadd(s, x);
            fx.b.def_var(acc, s);
            Ok(())
        })?;
        let s = fx.b.use_var(acc);
        let d = fconst(fx, ty, p as f32);
        let y = fx.b.ins().fdiv(s, d);
        let o = fx.b.ins().iadd(dst, cb);
        fx.store(y, o, imm);
        Ok(())
    };
    fx.for_n(c / 4, |fx, q| {
        let cb = fx.mul_imm(q, 16);
        one(fx, types::F32X4, cb, 0)
    })?;
    let zero = fx.ic(0);
    for ch in c / 4 * 4..c {
        one(fx, types::F32, zero, 4 * ch as i64)?;
    }
    Ok(1)
}

/// Channel concatenation, per position.
pub fn concat(
    fx: &mut Fx,
    srcs: &[(Tensor, usize)],
    dst_t: &Tensor,
    dst_off: usize,
) -> Result<usize, CodegenError> {
    let dst = fx.arena_at(dst_off);
    let bases: Vec<Value> = srcs.iter().map(|(_, o)| fx.arena_at(*o)).collect();
    let ctot = dst_t.c;
    let bits = dst_t.dtype == DType::Bit;
    fx.for_units(|fx, q| {
        let o = if bits {
            let o = fx.mul_imm(q, (8 * dst_t.cw()) as i64);
            let o = fx.b.ins().iadd(dst, o);
            fx.zero_bytes(o, 8 * dst_t.cw());
            o
        } else {
            let o = fx.mul_imm(q, (4 * ctot) as i64);
            fx.b.ins().iadd(dst, o)
        };
        let mut off = 0usize;
        for ((t, _), &base) in srcs.iter().zip(&bases) {
            let a = if bits {
                let a = fx.mul_imm(q, (8 * t.cw()) as i64);
                fx.b.ins().iadd(base, a)
            } else {
                let a = fx.mul_imm(q, (4 * t.c) as i64);
                fx.b.ins().iadd(base, a)
            };
            fx.for_n(t.c, |fx, ch| {
                if bits {
                    let bit = bit_at(fx, a, ch);
                    let idx = fx.add_imm(ch, off as i64);
                    or_bit(fx, o, idx, bit);
                } else {
                    let i = fx.mul_imm(ch, 4);
                    let ai = fx.b.ins().iadd(a, i);
                    let v = fx.load(types::F32, ai, 0);
                    let oi = fx.b.ins().iadd(o, i);
                    fx.store(v, oi, (4 * off) as i64);
                }
                Ok(())
            })?;
            off += t.c;
        }
        Ok(())
    })?;
    Ok(dst_t.pos)
}
