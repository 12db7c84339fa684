//! The other kernels: layout conversions at the model boundary, padding,
//! unpacking, flatten and concat (elementwise ops are in
//! `kernels::elementwise`, pooling in `kernels::pool`).

use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value, types};

use crate::codegen::CodegenError;
use crate::codegen::emit::{Fx, le};
use crate::codegen::plan::Tensor;
use crate::ir::DType;

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

/// `shuffle` of two `f32x4` by 32-bit lane indices (0–3 from `a`, 4–7 from
/// `b`); the patterns used here lower to `punpck{l,h}{dq,qdq}`.
fn shuf(fx: &mut Fx, a: Value, b: Value, lanes: [u8; 4]) -> Value {
    let bytes: Vec<u8> = lanes.iter().flat_map(|&l| 4 * l..4 * l + 4).collect();
    let mask = fx.b.func.dfg.immediates.push(bytes.into());
    let a = fx.b.ins().bitcast(types::I8X16, le(), a);
    let b = fx.b.ins().bitcast(types::I8X16, le(), b);
    let v = fx.b.ins().shuffle(a, b, mask);
    fx.b.ins().bitcast(types::F32X4, le(), v)
}

/// Transposes four `f32x4` rows into four columns (8 shuffles).
fn transpose4(fx: &mut Fx, r: [Value; 4]) -> [Value; 4] {
    let t0 = shuf(fx, r[0], r[1], [0, 4, 1, 5]);
    let t1 = shuf(fx, r[2], r[3], [0, 4, 1, 5]);
    let t2 = shuf(fx, r[0], r[1], [2, 6, 3, 7]);
    let t3 = shuf(fx, r[2], r[3], [2, 6, 3, 7]);
    [
        shuf(fx, t0, t1, [0, 1, 4, 5]),
        shuf(fx, t0, t1, [2, 3, 6, 7]),
        shuf(fx, t2, t3, [0, 1, 4, 5]),
        shuf(fx, t2, t3, [2, 3, 6, 7]),
    ]
}

/// Where the rows of a transpose come from.
#[derive(Clone, Copy)]
enum Rows {
    /// f32 rows of `stride` elements.
    F32 { stride: usize },
    /// Bit rows of `words` 64-bit words, read as ±1.0 (bit 1 → −1.0) through
    /// `table`: 16 `f32x4` entries, one per nibble.
    Bits { words: usize, table: Value },
}

/// `dst[col·dst_stride + row] = src[row][col]` for `rows` rows of `cols`
/// columns, as f32, over row blocks `blk` (four rows each; the block index
/// `rows / 4` holds the leftover rows): 4×4 tiles of loads, an 8-shuffle
/// transpose and vector stores, with scalar edges.
#[allow(clippy::too_many_arguments)]
fn transpose_block(
    fx: &mut Fx,
    src: Value,
    kind: Rows,
    dst: Value,
    dst_stride: usize,
    rows: usize,
    cols: usize,
    blk: Value,
) -> Result<(), CodegenError> {
    let row_bytes = match kind {
        Rows::F32 { stride } => 4 * stride,
        Rows::Bits { words, .. } => 8 * words,
    } as i64;
    // One element, scalar.
    let elem = |fx: &mut Fx, row: Value, col: Value| -> Value {
        let ra = fx.mul_imm(row, row_bytes);
        let ra = fx.b.ins().iadd(src, ra);
        let v = match kind {
            Rows::F32 { .. } => {
                let c4 = fx.mul_imm(col, 4);
                let a = fx.b.ins().iadd(ra, c4);
                fx.load(types::F32, a, 0)
            }
            Rows::Bits { .. } => {
                let bit = bit_at(fx, ra, col);
                bit_value(fx, bit)
            }
        };
        let o = fx.mul_imm(col, dst_stride as i64);
        let o = fx.b.ins().iadd(o, row);
        let o = fx.mul_imm(o, 4);
        let o = fx.b.ins().iadd(dst, o);
        fx.store(v, o, 0);
        v
    };
    let full = rows / 4;
    let c4 = cols / 4;
    let vec_part = |fx: &mut Fx, r0: Value| -> Result<(), CodegenError> {
        let bases: Vec<Value> = (0..4)
            .map(|k| {
                let r = fx.add_imm(r0, k);
                let o = fx.mul_imm(r, row_bytes);
                fx.b.ins().iadd(src, o)
            })
            .collect();
        fx.for_n(c4, |fx, cb| {
            let col = fx.mul_imm(cb, 4);
            let r: Vec<Value> = bases
                .iter()
                .map(|&base| match kind {
                    Rows::F32 { .. } => {
                        let o = fx.mul_imm(col, 4);
                        let a = fx.b.ins().iadd(base, o);
                        fx.load(types::F32X4, a, 0)
                    }
                    Rows::Bits { table, .. } => {
                        let w = fx.b.ins().ushr_imm_s(col, 6);
                        let w = fx.mul_imm(w, 8);
                        let a = fx.b.ins().iadd(base, w);
                        let word = fx.load(types::I64, a, 0);
                        let sh = fx.b.ins().band_imm_s(col, 63);
                        let n = fx.b.ins().ushr(word, sh);
                        let n = fx.b.ins().band_imm_s(n, 15);
                        let n = fx.mul_imm(n, 16);
                        let e = fx.b.ins().iadd(table, n);
                        fx.b.ins().load(types::F32X4, MemFlagsData::trusted(), e, 0)
                    }
                })
                .collect();
            let t = transpose4(fx, [r[0], r[1], r[2], r[3]]);
            for (k, v) in t.into_iter().enumerate() {
                let c = fx.add_imm(col, k as i64);
                let o = fx.mul_imm(c, dst_stride as i64);
                let o = fx.b.ins().iadd(o, r0);
                let o = fx.mul_imm(o, 4);
                let a = fx.b.ins().iadd(dst, o);
                fx.store(v, a, 0);
            }
            Ok(())
        })?;
        if !cols.is_multiple_of(4) {
            for k in 0..4 {
                let row = fx.add_imm(r0, k);
                for col in 4 * c4..cols {
                    let col = fx.ic(col as i64);
                    elem(fx, row, col);
                }
            }
        }
        Ok(())
    };
    if rows.is_multiple_of(4) {
        let r0 = fx.mul_imm(blk, 4);
        return vec_part(fx, r0);
    }
    // Blocks below `full` are vector blocks; block `full` the leftover rows.
    let is_vec = fx.b.ins().icmp_imm_s(
        cranelift_codegen::ir::condcodes::IntCC::SignedLessThan,
        blk,
        full as i64,
    );
    fx.if_else(
        is_vec,
        |fx| {
            if full > 0 {
                let r0 = fx.mul_imm(blk, 4);
                vec_part(fx, r0)?;
            }
            Ok(())
        },
        |fx| {
            for row in 4 * full..rows {
                fx.for_n(cols, |fx, col| {
                    let row = fx.ic(row as i64);
                    elem(fx, row, col);
                    Ok(())
                })?;
            }
            Ok(())
        },
    )
}

/// Stores `fill` to the `n` f32 at `base + 4·at` (vectors, scalar tail).
fn fill_f32(fx: &mut Fx, base: Value, at: usize, n: usize, fill: f32) -> Result<(), CodegenError> {
    if n == 0 {
        return Ok(());
    }
    let f = fx.fc(fill);
    let v = fx.b.ins().splat(types::F32X4, f);
    let at = 4 * at as i64;
    fx.for_n(n / 4, |fx, i| {
        let o = fx.mul_imm(i, 16);
        let a = fx.b.ins().iadd(base, o);
        fx.store(v, a, at);
        Ok(())
    })?;
    for k in 4 * (n / 4)..n {
        fx.store(f, base, at + 4 * k as i64);
    }
    Ok(())
}

/// Copies `n` f32 from `src` to `dst` (vectors, scalar tail).
fn copy_f32(fx: &mut Fx, src: Value, dst: Value, n: usize) -> Result<(), CodegenError> {
    fx.for_n(n / 4, |fx, i| {
        let o = fx.mul_imm(i, 16);
        let a = fx.b.ins().iadd(src, o);
        let v = fx.load(types::F32X4, a, 0);
        let d = fx.b.ins().iadd(dst, o);
        fx.store(v, d, 0);
        Ok(())
    })?;
    for k in 4 * (n / 4)..n {
        let v = fx.load(types::F32, src, 4 * k as i64);
        fx.store(v, dst, 4 * k as i64);
    }
    Ok(())
}

/// Copies `n` 64-bit words from `src` to `dst` (16-byte vectors, then a
/// word).
fn copy_words(fx: &mut Fx, src: Value, dst: Value, n: usize) -> Result<(), CodegenError> {
    fx.for_n(n / 2, |fx, i| {
        let o = fx.mul_imm(i, 16);
        let a = fx.b.ins().iadd(src, o);
        let v = fx.load(types::I8X16, a, 0);
        let d = fx.b.ins().iadd(dst, o);
        fx.store(v, d, 0);
        Ok(())
    })?;
    if n % 2 == 1 {
        let v = fx.load(types::I64, src, 8 * (n - 1) as i64);
        fx.store(v, dst, 8 * (n - 1) as i64);
    }
    Ok(())
}

/// The ±1.0 nibble table of [`Rows::Bits`].
fn nibble_table(fx: &mut Fx) -> Result<Value, CodegenError> {
    let v: Vec<f32> = (0..16u32)
        .flat_map(|n| (0..4).map(move |l| if n >> l & 1 == 1 { -1.0 } else { 1.0 }))
        .collect();
    fx.f32_data(&v)
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
    if !bits_out {
        let kind = match t.dtype {
            DType::F32 => Rows::F32 { stride: c },
            DType::Bit => Rows::Bits {
                words: t.cw(),
                table: nibble_table(fx)?,
            },
        };
        return fx.for_n(p.div_ceil(4), |fx, blk| {
            transpose_block(fx, src, kind, dst, p, p, c, blk)
        });
    }
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
    rows: Option<crate::codegen::plan::PaddedRows>,
) -> Result<usize, CodegenError> {
    let src = fx.io_ptr(io);
    let dst = fx.arena_at(dst_off);
    let (c, p) = (dst_t.c, dst_t.pos);
    if let Some(rows) = rows {
        return input_rows(fx, src, dst, c, rows);
    }
    // C order `[C][P]` is a transpose of channels-last `[P][C]`; the work
    // units are blocks of four channels.
    fx.for_units(|fx, blk| transpose_block(fx, src, Rows::F32 { stride: p }, dst, c, c, p, blk))?;
    Ok(c.div_ceil(4))
}

/// An image `[C][H][W]` to channels-last `[H+2ph][W+2pw][C]` with a zero
/// border, one image row per unit: per channel, four pixels' loads from the
/// row and their stores `C` floats apart, from one address each. The
/// border rows belong to the first and last units.
fn input_rows(
    fx: &mut Fx,
    src: Value,
    dst: Value,
    c: usize,
    rows: crate::codegen::plan::PaddedRows,
) -> Result<usize, CodegenError> {
    let [h, w] = rows.hw;
    let [ph, pw] = rows.pad;
    let wp = w + 2 * pw;
    let out_row = (4 * c * wp) as i64;
    let border_rows = |fx: &mut Fx, i: Value, at_row: i64, first: usize| {
        let hit =
            fx.b.ins()
                .icmp_imm_s(cranelift_codegen::ir::condcodes::IntCC::Equal, i, at_row);
        fx.when(hit, |fx| {
            fill_f32(fx, dst, first * c * wp, ph * c * wp, 0.0)
        })
    };
    fx.for_units(|fx, i| {
        if ph > 0 {
            border_rows(fx, i, 0, 0)?;
            border_rows(fx, i, h as i64 - 1, ph + h)?;
        }
        let o = fx.mul_imm(i, out_row);
        let row = fx.b.ins().iadd(dst, o);
        let row = fx.add_imm(row, ph as i64 * out_row);
        fill_f32(fx, row, 0, pw * c, 0.0)?;
        fill_f32(fx, row, (pw + w) * c, pw * c, 0.0)?;
        let so = fx.mul_imm(i, (4 * w) as i64);
        let s = fx.b.ins().iadd(src, so);
        let d = fx.add_imm(row, (4 * pw * c) as i64);
        let pixel = (4 * c) as i64;
        let four = |fx: &mut Fx, s: Value, d: Value, n: usize| {
            for ch in 0..c {
                let plane = (4 * ch * h * w) as i64;
                for k in 0..n as i64 {
                    let v = fx.load(types::F32, s, plane + 4 * k);
                    fx.store(v, d, k * pixel + 4 * ch as i64);
                }
            }
        };
        fx.for_n(w / 4, |fx, q| {
            let sq = fx.mul_imm(q, 16);
            let sq = fx.b.ins().iadd(s, sq);
            let dq = fx.mul_imm(q, 4 * pixel);
            let dq = fx.b.ins().iadd(d, dq);
            four(fx, sq, dq, 4);
            Ok(())
        })?;
        let tail = (w / 4 * 4) as i64;
        let st = fx.add_imm(s, 4 * tail);
        let dt = fx.add_imm(d, tail * pixel);
        four(fx, st, dt, w % 4);
        Ok(())
    })?;
    Ok(h)
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

/// Copies into a zero-padded buffer: f32 zeros, bits zero words, regrouped
/// so group `g` starts at word `g·cwg`.
pub fn pad(
    fx: &mut Fx,
    src_t: &Tensor,
    src_off: usize,
    dst_off: usize,
    hw: [usize; 2],
    padding: [usize; 2],
    regroup: (usize, usize, usize),
) -> Result<usize, CodegenError> {
    let [h, w] = hw;
    let [ph, pw] = padding;
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let src = fx.arena_at(src_off);
    let dst = fx.arena_at(dst_off);
    match src_t.dtype {
        DType::F32 => {
            let c = src_t.c;
            // Border only, then the image rows as contiguous runs.
            let row = wp * c;
            fill_f32(fx, dst, 0, ph * row, 0.0)?;
            fill_f32(fx, dst, (ph + h) * row, ph * row, 0.0)?;
            fx.for_n(h, |fx, r| {
                let o = fx.mul_imm(r, (row * 4) as i64);
                let d = fx.b.ins().iadd(dst, o);
                let d = fx.add_imm(d, (ph * row * 4) as i64);
                fill_f32(fx, d, 0, pw * c, 0.0)?;
                fill_f32(fx, d, (pw + w) * c, pw * c, 0.0)?;
                let so = fx.mul_imm(r, (w * c * 4) as i64);
                let s = fx.b.ins().iadd(src, so);
                let d = fx.add_imm(d, (pw * c * 4) as i64);
                copy_f32(fx, s, d, w * c)
            })?;
        }
        DType::Bit => {
            let (groups, cg, cwg) = regroup;
            let cw = src_t.cw();
            let xw = groups * cwg;
            // The bits of word `wi` of a group that hold its channels.
            let valid = |wi: usize| -> u64 {
                let n = cg.saturating_sub(64 * wi).min(64);
                if n == 64 { u64::MAX } else { (1u64 << n) - 1 }
            };
            // Zero words into `n` pixels from byte `at` of `base`.
            let border = |fx: &mut Fx, base: Value, at: usize, n: usize| {
                fx.for_n(n, |fx, px| {
                    let o = fx.mul_imm(px, (8 * xw) as i64);
                    let o = fx.b.ins().iadd(base, o);
                    let o = fx.add_imm(o, at as i64);
                    fx.zero_bytes(o, 8 * xw);
                    Ok(())
                })
            };
            if src_t.c.is_multiple_of(64) && (groups == 1 || cg.is_multiple_of(64)) {
                // The layout is unchanged (whole words, no regrouping): pad
                // the border only and copy each image row as one run.
                let px = 8 * xw;
                border(fx, dst, 0, ph * wp)?;
                border(fx, dst, (ph + h) * wp * px, ph * wp)?;
                return fx
                    .for_n(h, |fx, r| {
                        let o = fx.mul_imm(r, (wp * px) as i64);
                        let d = fx.b.ins().iadd(dst, o);
                        let d = fx.add_imm(d, (ph * wp * px) as i64);
                        border(fx, d, 0, pw)?;
                        border(fx, d, (pw + w) * px, pw)?;
                        let so = fx.mul_imm(r, (w * px) as i64);
                        let s = fx.b.ins().iadd(src, so);
                        let d = fx.add_imm(d, (pw * px) as i64);
                        copy_words(fx, s, d, w * xw)
                    })
                    .map(|()| 1);
            }
            border(fx, dst, 0, hp * wp)?;
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
                            let m = valid(wi);
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

/// `slice_channels` and `shuffle_channels`: output channel `j` of each
/// position is channel `map[j]` of the source (`Op::channel_sources`). The map
/// is known at compile time, so it is emitted as its runs of consecutive
/// source channels (one run for a slice; one channel each for a shuffle).
pub fn gather_channels(
    fx: &mut Fx,
    src_t: &Tensor,
    src_off: usize,
    map: &[usize],
    dst_t: &Tensor,
    dst_off: usize,
) -> Result<usize, CodegenError> {
    let mut runs: Vec<ChannelRun> = Vec::new();
    for (j, &from) in map.iter().enumerate() {
        match runs.last_mut() {
            Some(r) if r.to + r.n == j && r.from + r.n == from => r.n += 1,
            _ => runs.push(ChannelRun {
                src: 0,
                from,
                to: j,
                n: 1,
            }),
        }
    }
    copy_channel_runs(fx, &[(src_t.clone(), src_off)], &runs, dst_t, dst_off)
}

/// Channel concatenation, per position: one run per operand.
pub fn concat(
    fx: &mut Fx,
    srcs: &[(Tensor, usize)],
    dst_t: &Tensor,
    dst_off: usize,
) -> Result<usize, CodegenError> {
    let mut to = 0;
    let runs: Vec<ChannelRun> = srcs
        .iter()
        .enumerate()
        .map(|(src, (t, _))| {
            let run = ChannelRun {
                src,
                from: 0,
                to,
                n: t.c,
            };
            to += t.c;
            run
        })
        .collect();
    copy_channel_runs(fx, srcs, &runs, dst_t, dst_off)
}

/// `n` consecutive channels of source `src`, from channel `from`, to the
/// destination's channels from `to`.
struct ChannelRun {
    src: usize,
    from: usize,
    to: usize,
    n: usize,
}

/// The channel copies of `concat`, `slice_channels` and `shuffle_channels`:
/// at every position, each run is a loop of loads and stores (f32) or of bit
/// moves into the zeroed packed words (bits).
fn copy_channel_runs(
    fx: &mut Fx,
    srcs: &[(Tensor, usize)],
    runs: &[ChannelRun],
    dst_t: &Tensor,
    dst_off: usize,
) -> Result<usize, CodegenError> {
    let bits = dst_t.dtype == DType::Bit;
    let row_bytes = |t: &Tensor| if bits { 8 * t.cw() } else { 4 * t.c };
    let dst = fx.arena_at(dst_off);
    let bases: Vec<Value> = srcs.iter().map(|(_, o)| fx.arena_at(*o)).collect();
    fx.for_units(|fx, q| {
        let o = fx.mul_imm(q, row_bytes(dst_t) as i64);
        let o = fx.b.ins().iadd(dst, o);
        if bits {
            fx.zero_bytes(o, row_bytes(dst_t));
        }
        let rows: Vec<Value> = srcs
            .iter()
            .zip(&bases)
            .map(|((t, _), &base)| {
                let a = fx.mul_imm(q, row_bytes(t) as i64);
                fx.b.ins().iadd(base, a)
            })
            .collect();
        for run in runs {
            let a = rows[run.src];
            fx.for_n(run.n, |fx, i| {
                if bits {
                    let ch = fx.add_imm(i, run.from as i64);
                    let bit = bit_at(fx, a, ch);
                    let idx = fx.add_imm(i, run.to as i64);
                    or_bit(fx, o, idx, bit);
                } else {
                    let i4 = fx.mul_imm(i, 4);
                    let ai = fx.b.ins().iadd(a, i4);
                    let v = fx.load(types::F32, ai, (4 * run.from) as i64);
                    let oi = fx.b.ins().iadd(o, i4);
                    fx.store(v, oi, (4 * run.to) as i64);
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    Ok(dst_t.pos)
}
