//! Pooling: max and average windows (f32, and max over packed bits) and the
//! global average, channels-last.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Type, Value, types};

use super::elementwise::{fconst, max_gt};
use crate::codegen::CodegenError;
use crate::codegen::emit::Fx;
use crate::codegen::plan::{PoolKind, Tensor};

/// Output positions `first..end` along one axis whose windows cover the
/// same taps `lo..hi` of the input: the border positions, where the window
/// hangs over the padding, and the interior runs between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TapRange {
    first: usize,
    end: usize,
    lo: usize,
    hi: usize,
}

/// The [`TapRange`]s of `out` positions with windows of `k` taps, stride
/// `s` and padding `p` over an input of `size`.
fn tap_ranges(out: usize, size: usize, k: usize, s: usize, p: usize) -> Vec<TapRange> {
    let mut ranges: Vec<TapRange> = Vec::new();
    for i in 0..out {
        // Tap u reads input i·s − p + u, inside iff 0 ≤ i·s − p + u < size.
        let lo = p.saturating_sub(i * s).min(k);
        let hi = k.min((size + p).saturating_sub(i * s)).max(lo);
        match ranges.last_mut() {
            Some(r) if (r.lo, r.hi) == (lo, hi) => r.end = i + 1,
            _ => ranges.push(TapRange {
                first: i,
                end: i + 1,
                lo,
                hi,
            }),
        }
    }
    ranges
}

/// Pooling, channels-last, units are output rows. The window is clipped to
/// the input, as the interpreter's is: a padded tap is `−∞` for max (never
/// wins), `0` for the average (adds nothing to a sum that starts at `+0`,
/// which no sum of it turns into `−0`) and all ones for bits (the identity
/// of their AND), so skipping it changes nothing and no padded copy of the
/// input is needed. Output rows and columns fall into [`tap_ranges`], each
/// with its taps unrolled; a row picks its range by comparing with the
/// ranges' ends.
#[allow(clippy::too_many_arguments)]
pub fn pool(
    fx: &mut Fx,
    src_off: usize,
    hw: [usize; 2],
    pad: [usize; 2],
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
    let [h, w] = hw;
    let [oh, ow] = out;
    let rows = tap_ranges(oh, h, kh, sh, pad[0]);
    let cols = tap_ranges(ow, w, kw, sw, pad[1]);
    let pixel_bytes = match kind {
        PoolKind::MaxBits => 8 * c.div_ceil(64),
        PoolKind::Max | PoolKind::Avg => 4 * c,
    } as i64;
    let area = (kh * kw) as f32;
    // One output pixel: `a` points at input pixel (i·sh − ph, j·sw − pw),
    // which may lie in the padding; only the taps inside are read.
    let window =
        |fx: &mut Fx, a: Value, o: Value, rt: TapRange, ct: TapRange| -> Result<(), CodegenError> {
            let taps: Vec<i64> = (rt.lo..rt.hi)
                .flat_map(|u| (ct.lo..ct.hi).map(move |v| (u * w + v) as i64 * pixel_bytes))
                .collect();
            if kind == PoolKind::MaxBits {
                for wi in 0..c.div_ceil(64) as i64 {
                    let mut y = fx.ic(-1);
                    for (n, &t) in taps.iter().enumerate() {
                        let x = fx.load(types::I64, a, t + 8 * wi);
                        y = if n == 0 { x } else { fx.b.ins().band(y, x) };
                    }
                    fx.store(y, o, 8 * wi);
                }
                return Ok(());
            }
            let one = |fx: &mut Fx, ty: Type, cb: Value, imm: i64| {
                let ac = fx.b.ins().iadd(a, cb);
                let init = if kind == PoolKind::Max {
                    f32::NEG_INFINITY
                } else {
                    0.0
                };
                let mut acc = fconst(fx, ty, init);
                for &t in &taps {
                    let x = fx.load(ty, ac, t + imm);
                    acc = if kind == PoolKind::Max {
                        max_gt(fx, ty, x, acc)
                    } else {
                        fx.b.ins().fadd(acc, x)
                    };
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
        };
    // One output row `i` of row range `rt`: its column ranges in turn.
    let row = |fx: &mut Fx, i: Value, rt: TapRange| -> Result<(), CodegenError> {
        for &ct in &cols {
            let (j0, j1) = (fx.ic(ct.first as i64), fx.ic(ct.end as i64));
            fx.for_range(j0, j1, 1, |fx, j| {
                let r0 = fx.mul_imm(i, (sh * w) as i64);
                let c0 = fx.mul_imm(j, sw as i64);
                let px = fx.b.ins().iadd(r0, c0);
                let px = fx.add_imm(px, -((pad[0] * w + pad[1]) as i64));
                let a = fx.mul_imm(px, pixel_bytes);
                let a = fx.b.ins().iadd(src, a);
                let opx = fx.mul_imm(i, ow as i64);
                let opx = fx.b.ins().iadd(opx, j);
                let o = fx.mul_imm(opx, pixel_bytes);
                let o = fx.b.ins().iadd(dst, o);
                window(fx, a, o, rt, ct)
            })?;
        }
        Ok(())
    };
    fx.for_units(|fx, i| row_in_range(fx, i, &rows, &row))?;
    Ok(oh)
}

/// Emits `row(i, range)` for the range of `ranges` (in order, covering
/// every row) that holds row `i`: `if i < end₀ { … } else if i < end₁ …`.
fn row_in_range(
    fx: &mut Fx,
    i: Value,
    ranges: &[TapRange],
    row: &dyn Fn(&mut Fx, Value, TapRange) -> Result<(), CodegenError>,
) -> Result<(), CodegenError> {
    match ranges {
        [] => Ok(()),
        [last] => row(fx, i, *last),
        [first, rest @ ..] => {
            let inside =
                fx.b.ins()
                    .icmp_imm_s(IntCC::SignedLessThan, i, first.end as i64);
            fx.if_else(
                inside,
                |fx| row(fx, i, *first),
                |fx| row_in_range(fx, i, rest, row),
            )
        }
    }
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
    // Channels `16·u + lanes` of unit `u`, one accumulator per vector of 4
    // (and per channel of a scalar tail), summed over the positions in
    // order as the interpreter does: independent chains, so the adds'
    // latency overlaps.
    let block = |fx: &mut Fx, u: Value, lanes: usize| -> Result<(), CodegenError> {
        let cb = fx.mul_imm(u, 64);
        let base = fx.b.ins().iadd(src, cb);
        let out = fx.b.ins().iadd(dst, cb);
        let parts: Vec<(Type, i64)> = (0..lanes / 4)
            .map(|v| (types::F32X4, 16 * v as i64))
            .chain((lanes / 4 * 4..lanes).map(|ch| (types::F32, 4 * ch as i64)))
            .collect();
        let accs: Vec<_> = parts
            .iter()
            .map(|&(ty, _)| {
                let z = fconst(fx, ty, 0.0);
                fx.var(ty, z)
            })
            .collect();
        fx.for_n(p, |fx, q| {
            let o = fx.mul_imm(q, (4 * c) as i64);
            let a = fx.b.ins().iadd(base, o);
            for (&(ty, imm), &acc) in parts.iter().zip(&accs) {
                let x = fx.load(ty, a, imm);
                let s = fx.b.use_var(acc);
                let s = fx.b.ins().fadd(s, x);
                fx.b.def_var(acc, s);
            }
            Ok(())
        })?;
        for (&(ty, imm), &acc) in parts.iter().zip(&accs) {
            let s = fx.b.use_var(acc);
            let d = fconst(fx, ty, p as f32);
            let y = fx.b.ins().fdiv(s, d);
            fx.store(y, out, imm);
        }
        Ok(())
    };
    let full = c / 16;
    fx.for_units(|fx, u| {
        if c.is_multiple_of(16) {
            return block(fx, u, 16);
        }
        let whole =
            fx.b.ins()
                .icmp_imm_s(IntCC::UnsignedLessThan, u, full as i64);
        fx.if_else(whole, |fx| block(fx, u, 16), |fx| block(fx, u, c % 16))
    })?;
    Ok(c.div_ceil(16))
}

#[cfg(test)]
mod tests {
    use super::{TapRange, tap_ranges};

    #[test]
    fn tap_ranges_split_borders_from_the_interior() {
        // The Bi-Real max-pool: 3×3, stride 2, pad 1 over 112.
        let r = tap_ranges(56, 112, 3, 2, 1);
        assert_eq!(
            r,
            vec![
                TapRange {
                    first: 0,
                    end: 1,
                    lo: 1,
                    hi: 3
                },
                TapRange {
                    first: 1,
                    end: 56,
                    lo: 0,
                    hi: 3
                },
            ]
        );
        // Both borders clipped: 3×3, stride 1, pad 1 over 4.
        let r = tap_ranges(4, 4, 3, 1, 1);
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].lo, r[0].hi, r[2].lo, r[2].hi), (1, 3, 0, 2));
        // No padding: one range of every tap.
        assert_eq!(
            tap_ranges(3, 7, 3, 2, 0),
            vec![TapRange {
                first: 0,
                end: 3,
                lo: 0,
                hi: 3
            }]
        );
    }
}
