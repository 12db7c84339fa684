//! The end of a binary layer: per-channel tables, the zero-padding
//! correction's border classes, and the epilogue that turns a popcount into
//! the interpreter's `dot`, its f32 affine form, or thresholded bits.

use super::*;

/// Per-channel tables of an epilogue (addresses of padded f32/i32 arrays).
pub(super) struct EpiTables {
    t: Vec<Value>,
}

impl EpiTables {
    pub(super) fn new(
        fx: &mut Fx,
        epi: &Epilogue,
        len: usize,
        ktot: usize,
    ) -> Result<EpiTables, CodegenError> {
        let mut t = Vec::new();
        match epi {
            Epilogue::Dot { alpha } => {
                if let Some(a) = alpha {
                    t.push(fx.f32_data(&padded(a, len))?);
                }
            }
            Epilogue::BatchNorm {
                alpha,
                gamma,
                mean,
                std,
                beta,
            } => {
                if let Some(a) = alpha {
                    t.push(fx.f32_data(&padded(a, len))?);
                }
                for v in [gamma, mean, std, beta] {
                    t.push(fx.f32_data(&padded(v, len))?);
                }
            }
            Epilogue::Affine { mul, bias } => {
                t.push(fx.f32_data(&padded(mul, len))?);
                t.push(fx.f32_data(&padded(bias, len))?);
            }
            Epilogue::Threshold { dir, t: th } => {
                let mut d = dir.clone();
                d.resize(len, 1);
                let mut h = th.clone();
                h.resize(len, 0);
                t.push(fx.i32_data(&d)?);
                t.push(fx.i32_data(&h)?);
                // The same test on the popcount `c` (dot = K − 2c) without
                // padding corrections: bit 1 (−1) iff `(c ^ s) > e`.
                let (s, e) = count_thresholds(&d, &h, ktot as i64);
                t.push(fx.i32_data(&s)?);
                t.push(fx.i32_data(&e)?);
            }
        }
        Ok(EpiTables { t })
    }
}

/// Thresholds on the popcount: with `dot = K − 2c`, the bit is 1 (−1) iff
/// `dir·dot < t`, that is `c > ⌊(K − t)/2⌋` for `dir = 1` and
/// `c < ⌈(K + t)/2⌉ ⇔ !c > −⌈(K + t)/2⌉ − 1` for `dir = −1`; so one xor with
/// `s ∈ {0, −1}` and one signed compare against `e` (clamped to the range
/// `c ^ s` can take, `c ∈ [0, K]`).
pub(super) fn count_thresholds(dir: &[i32], t: &[i32], k: i64) -> (Vec<i32>, Vec<i32>) {
    dir.iter()
        .zip(t)
        .map(|(&d, &t)| {
            let t = i64::from(t);
            if d >= 0 {
                (0, (k - t).div_euclid(2).clamp(-1, k) as i32)
            } else {
                let ceil = -(-(k + t)).div_euclid(2);
                (-1, (-ceil - 1).clamp(-k - 2, -1) as i32)
            }
        })
        .unzip()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn epilogue(
    fx: &mut Fx,
    b: &BinConv,
    tables: &EpiTables,
    counts: &[[Value; 4]],
    o0: Value,
    valid: usize,
    ktot: i64,
    corr: &[Option<Value>],
    outs: &[Value],
    rmw: bool,
) -> Result<(), CodegenError> {
    let nvec = valid.div_ceil(4);
    let o4 = fx.mul_imm(o0, 4);
    let tab: Vec<Value> = tables.t.iter().map(|&t| fx.b.ins().iadd(t, o4)).collect();
    let kv = {
        let k = fx.icty(types::I32, ktot);
        fx.b.ins().splat(types::I32X4, k)
    };
    let ld = |fx: &mut Fx, ty, base: Value, r: usize| {
        fx.b.ins()
            .load(ty, MemFlagsData::trusted(), base, (16 * r) as i32)
    };
    // Per-vector loads of the tables, shared by the pixels.
    let mut tv: Vec<Vec<Value>> = Vec::new();
    for r in 0..nvec {
        let ty = if b.epi.bits() {
            types::I32X4
        } else {
            types::F32X4
        };
        tv.push(tab.iter().map(|&t| ld(fx, ty, t, r)).collect());
    }
    // Bits without padding corrections: compare the popcounts directly and
    // pack the 16 lane masks with two saturating narrows into one
    // `pmovmskb`.
    let direct = b.epi.bits() && corr.iter().all(Option::is_none);
    for (k, cnt) in counts.iter().enumerate() {
        let mut bits_acc: Option<Value> = None;
        if direct {
            let zero = {
                let z = fx.icty(types::I32, 0);
                fx.b.ins().splat(types::I32X4, z)
            };
            let m: Vec<Value> = (0..4)
                .map(|r| {
                    if r < nvec {
                        let t = &tv[r];
                        let x = fx.b.ins().bxor(cnt[r], t[2]);
                        fx.b.ins().icmp(IntCC::SignedGreaterThan, x, t[3])
                    } else {
                        zero
                    }
                })
                .collect();
            let lo = fx.b.ins().snarrow(m[0], m[1]);
            let hi = fx.b.ins().snarrow(m[2], m[3]);
            let m8 = fx.b.ins().snarrow(lo, hi);
            let mask = fx.b.ins().vhigh_bits(types::I64, m8);
            bits_acc = Some(if valid < 16 {
                fx.b.ins().band_imm_s(mask, (1i64 << valid) - 1)
            } else {
                mask
            });
        }
        for r in 0..if direct { 0 } else { nvec } {
            let twice = fx.b.ins().ishl_imm_s(cnt[r], 1);
            let mut dot = fx.b.ins().isub(kv, twice);
            if let Some(c) = corr[k] {
                let cv = fx.b.ins().iadd(c, o4);
                let cv = ld(fx, types::I32X4, cv, r);
                dot = fx.b.ins().isub(dot, cv);
            }
            let t = &tv[r];
            let lanes = (valid - 4 * r).min(4);
            if b.epi.bits() {
                let d = fx.b.ins().imul(dot, t[0]);
                let plus = fx.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, d, t[1]);
                let minus = fx.b.ins().bnot(plus);
                let m = fx.b.ins().vhigh_bits(types::I64, minus);
                let m = fx.b.ins().band_imm_s(m, (1i64 << lanes) - 1);
                let m = fx.b.ins().ishl_imm_s(m, (4 * r) as i64);
                bits_acc = Some(match bits_acc {
                    None => m,
                    Some(a) => fx.b.ins().bor(a, m),
                });
                continue;
            }
            let f = fx.b.ins().fcvt_from_sint(types::F32X4, dot);
            let y = match &b.epi {
                Epilogue::Dot { alpha } => {
                    if alpha.is_some() {
                        fx.b.ins().fmul(f, t[0])
                    } else {
                        f
                    }
                }
                Epilogue::BatchNorm { alpha, .. } => {
                    let i = usize::from(alpha.is_some());
                    let y = if alpha.is_some() {
                        fx.b.ins().fmul(f, t[0])
                    } else {
                        f
                    };
                    let y = fx.b.ins().fsub(y, t[i + 1]);
                    let y = fx.b.ins().fmul(t[i], y);
                    let y = fx.b.ins().fdiv(y, t[i + 2]);
                    fx.b.ins().fadd(y, t[i + 3])
                }
                Epilogue::Affine { .. } => {
                    let y = fx.b.ins().fmul(t[0], f);
                    fx.b.ins().fadd(y, t[1])
                }
                Epilogue::Threshold { .. } => unreachable!("handled above"),
            };
            let addr = fx.b.ins().iadd(outs[k], o4);
            if lanes == 4 {
                fx.store(y, addr, (16 * r) as i64);
            } else {
                for l in 0..lanes {
                    let e = fx.b.ins().extractlane(y, l as u8);
                    fx.store(e, addr, (16 * r + 4 * l) as i64);
                }
            }
        }
        if let Some(m) = bits_acc {
            if rmw {
                // OR the ≤16 bits in at bit o0 (which may straddle two words).
                let word = fx.b.ins().ushr_imm_s(o0, 6);
                let word = fx.mul_imm(word, 8);
                let addr = fx.b.ins().iadd(outs[k], word);
                let sh = fx.b.ins().band_imm_s(o0, 63);
                let lo = fx.b.ins().ishl(m, sh);
                let old = fx.load(types::I64, addr, 0);
                let new = fx.b.ins().bor(old, lo);
                fx.store(new, addr, 0);
                // Bits past the word go to the next one, only when they exist.
                let cross = fx.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThan, sh, 48);
                fx.when(cross, |fx| {
                    let c64 = fx.ic(64);
                    let rsh = fx.b.ins().isub(c64, sh);
                    let hi = fx.b.ins().ushr(m, rsh);
                    let old = fx.load(types::I64, addr, 8);
                    let new = fx.b.ins().bor(old, hi);
                    fx.store(new, addr, 8);
                    Ok(())
                })?;
            } else {
                let byte = fx.b.ins().ushr_imm_s(o0, 3);
                let addr = fx.b.ins().iadd(outs[k], byte);
                fx.b.ins().istore16(crate::codegen::emit::mem(), m, addr, 0);
            }
        }
    }
    Ok(())
}

/// Border classes for `pad_value=0`: the distinct sets of padded taps, with
/// class 0 the empty set, and the class of every output pixel.
pub(super) fn correction_classes(b: &BinConv) -> (Vec<Vec<(usize, usize)>>, Vec<usize>) {
    let [oh, ow] = b.out;
    let mut classes: Vec<Vec<(usize, usize)>> = vec![Vec::new()];
    let mut of = vec![0usize; oh * ow];
    let Some([ph, pw, h, w]) = b.zero_pad else {
        return (classes, of);
    };
    let mut index = std::collections::HashMap::new();
    index.insert(Vec::new(), 0usize);
    for i in 0..oh {
        for j in 0..ow {
            let mut taps = Vec::new();
            for u in 0..b.k[0] {
                let r = (i * b.s[0] + u * b.d[0]) as isize - ph as isize;
                for v in 0..b.k[1] {
                    let c = (j * b.s[1] + v * b.d[1]) as isize - pw as isize;
                    if r < 0 || r >= h as isize || c < 0 || c >= w as isize {
                        taps.push((u, v));
                    }
                }
            }
            let n = index.len();
            let id = *index.entry(taps.clone()).or_insert(n);
            if id == classes.len() {
                classes.push(taps);
            }
            of[i * ow + j] = id;
        }
    }
    (classes, of)
}
