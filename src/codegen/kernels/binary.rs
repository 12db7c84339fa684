//! Binary convolution and dense layers: XNOR-popcount over packed bits.
//!
//! For ±1 vectors stored as bits (bit 1 = −1), `a·w = K − 2·popcount(a XOR w)`.
//! The input is read directly from the packed (padded) activation, no
//! im2col: a register tile of `nr` output pixels × 16 output channels walks
//! the `kh·kw·⌈(C/G)/32⌉` 32-bit chunks of the receptive field, each step
//! one 32-bit broadcast per pixel against a 64-byte weight line.
//!
//! * **Vector path** (`popcnt.i8x16`, one `vpopcntb` with AVX-512 BITALG+VL):
//!   a weight line holds chunk `t` of 16 channels as four `i32x4` vectors;
//!   `xor` with the broadcast chunk, `popcnt` per byte, `iadd` into byte
//!   accumulators, which are widened every 31 steps (≤ 8·31 = 248 per byte)
//!   by `iadd_pairwise(uwiden_low, uwiden_high)` (pmaddubsw) and its signed
//!   i16 form (pmaddwd), per Mula, Kurz & Lemire, "Faster Population Counts
//!   Using AVX2 Instructions" (2018). The steps run as a loop, one step per
//!   iteration, with the broadcasts of the next step loaded at the end of
//!   the current one and carried on the back-edge, so each is one
//!   `vbroadcastss m32` (see `vector_steps`): per step and 2 × 16 tile,
//!   4 weight loads, 2 broadcast loads and 24 vector ALU ops.
//! * **Bit outputs** compare the popcounts themselves against per-channel
//!   thresholds (`(c ^ s) > e`, see `count_thresholds`) and pack 16
//!   channels with two saturating narrows and one `pmovmskb`, when no
//!   zero-padding correction applies.
//! * **Scalar path** (`popcnt.i64`): 64-bit words, 4 channels × `nr` pixels
//!   of independent `i64` accumulators.
//!
//! Padding: the input buffer is pre-padded with bit 0 (= +1), which is
//! `pad_value=1` for free. For `pad_value=0` the padded taps' contribution
//! `Σ sign(W)` is subtracted from a per-(border class, channel) table, LCE's
//! zero-padding correction. The epilogue converts `dot` (as the interpreter
//! computes it) to f32 or compares it to integer thresholds and writes bits.

use cranelift_codegen::ir::{
    InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Value, condcodes::IntCC, types,
};
use cranelift_frontend::Variable;

use crate::codegen::CodegenError;
use crate::codegen::emit::{Fx, le};
use crate::codegen::kernels::wide::bconv::FOp;
use crate::codegen::kernels::wide::call::{Epi, WideConv};
use crate::codegen::kernels::wide::channel_parts;
use crate::codegen::plan::{BinConv, Epilogue};

mod epilogue;
use epilogue::{EpiTables, correction_classes, count_thresholds, epilogue};

/// Steps up to which the receptive field is fully unrolled.
const UNROLL: usize = 192;
/// Byte accumulators hold at most 31 steps of 8 bits per byte.
const FLUSH: usize = 31;

/// How one step of the receptive field addresses its input.
#[derive(Clone, Copy)]
struct StepAddr {
    /// Weight pointer for this step's segment.
    w: Value,
    /// Immediate offset from `w`.
    w_imm: i64,
    /// Runtime input offset (segment loops), added to the pixel base.
    dyn_off: Option<Value>,
    /// Immediate input offset.
    in_imm: i64,
}

/// Emits `n` steps, unrolled when short, else as a loop over segments of
/// `seg` steps reading input offsets from a table; `flush` runs after every
/// `seg` steps and at the end.
#[allow(clippy::too_many_arguments)]
fn segmented(
    fx: &mut Fx,
    wptr: Value,
    wstride: i64,
    offs: &[i64],
    seg: usize,
    body: &mut dyn FnMut(&mut Fx, StepAddr) -> Result<(), CodegenError>,
    flush: &mut dyn FnMut(&mut Fx) -> Result<(), CodegenError>,
) -> Result<(), CodegenError> {
    let n = offs.len();
    let start = if n <= UNROLL {
        0
    } else {
        let nseg = n / seg;
        let tab: Vec<i32> = offs[..nseg * seg].iter().map(|&o| o as i32).collect();
        let tab = fx.i32_data(&tab)?;
        fx.for_n(nseg, |fx, si| {
            let wseg = fx.mul_imm(si, seg as i64 * wstride);
            let wseg = fx.b.ins().iadd(wptr, wseg);
            let tseg = fx.mul_imm(si, seg as i64 * 4);
            let tseg = fx.b.ins().iadd(tab, tseg);
            for i in 0..seg {
                let off =
                    fx.b.ins()
                        .sload32(crate::codegen::emit::mem(), tseg, (4 * i) as i32);
                body(
                    fx,
                    StepAddr {
                        w: wseg,
                        w_imm: i as i64 * wstride,
                        dyn_off: Some(off),
                        in_imm: 0,
                    },
                )?;
            }
            flush(fx)
        })?;
        nseg * seg
    };
    for s in start..n {
        body(
            fx,
            StepAddr {
                w: wptr,
                w_imm: s as i64 * wstride,
                dyn_off: None,
                in_imm: offs[s],
            },
        )?;
        if (s + 1 - start) % seg == 0 && s + 1 < n {
            flush(fx)?;
        }
    }
    if start < n {
        flush(fx)?;
    }
    Ok(())
}

/// Emits the `n` steps of the vector path as runtime loops, one step per
/// iteration (input offsets from a table, weights at `wptr + 64·step`),
/// with `flush` after every segment of at most [`FLUSH`] steps.
///
/// * One step per iteration keeps the code small (compile time), and the
///   back-edge anchors each step's xor/popcount/add chains: with a long
///   straight-line receptive field, the e-graph pass of `opt_level=speed`
///   elaborates the pure chains accumulator by accumulator after all loads,
///   which keeps every loaded weight live and spills the tile.
/// * The activation broadcasts are software-pipelined: step `s + 1`'s are
///   loaded at the end of step `s` and passed along the back-edge. Each
///   `splat` then has one use (the branch argument), so Cranelift folds the
///   load into one `vbroadcastss m32` (a load-port µop); a splat used by four
///   `bxor`s is "multiply used" to the lowering, which then keeps `movl;
///   vmovd; vpbroadcastd`, two vector-ALU µops per pixel and step.
/// * The loop overhead (a table load, a few integer adds, a compare and a
///   branch) runs on the integer ports, beside the 24 vector ops of a step.
fn vector_steps(
    fx: &mut Fx,
    bases: &[Value],
    wptr: Value,
    offs: &[i64],
    acc8: &[[Variable; 4]],
    flush: &mut dyn FnMut(&mut Fx) -> Result<(), CodegenError>,
) -> Result<(), CodegenError> {
    let n = offs.len();
    if n == 0 {
        return flush(fx);
    }
    // One extra entry: the pipelined loads of the last iteration read it
    // (offset 0, the pixel itself) and discard the result.
    let mut tab: Vec<i32> = offs.iter().map(|&o| o as i32).collect();
    tab.push(0);
    let tab = fx.i32_data(&tab)?;
    let nr = bases.len();
    // A zero read from memory: the last (discarded) table entry.
    let opaque =
        fx.b.ins()
            .sload32(crate::codegen::emit::mem(), tab, 4 * n as i32);
    // Loop-carried: the table pointer, the weight pointer, the broadcasts.
    let bcasts = |fx: &mut Fx, tp: Value, wp: Value| -> Vec<cranelift_codegen::ir::BlockArg> {
        let off = fx.b.ins().sload32(crate::codegen::emit::mem(), tp, 0);
        let mut v: Vec<cranelift_codegen::ir::BlockArg> = vec![tp.into(), wp.into()];
        for &base in bases {
            let addr = fx.b.ins().iadd(base, off);
            let x = fx.load(types::I32, addr, 0);
            v.push(fx.b.ins().splat(types::I32X4, x).into());
        }
        v
    };
    let nseg = n.div_ceil(FLUSH);
    let per = n.div_ceil(nseg);
    fx.for_n(nseg, |fx, seg| {
        let s0 = fx.mul_imm(seg, per as i64);
        let s1 = fx.add_imm(s0, per as i64);
        let s1 = if n.is_multiple_of(per) {
            s1
        } else {
            let nv = fx.ic(n as i64);
            fx.b.ins().umin(s1, nv)
        };
        let t0 = fx.mul_imm(s0, 4);
        let tp0 = fx.b.ins().iadd(tab, t0);
        let w0 = fx.mul_imm(s0, 64);
        let wp0 = fx.b.ins().iadd(wptr, w0);
        let t1 = fx.mul_imm(s1, 4);
        let end = fx.b.ins().iadd(tab, t1);
        let first = bcasts(fx, tp0, wp0);
        let body = fx.b.create_block();
        let tp = fx.b.append_block_param(body, types::I64);
        let wp = fx.b.append_block_param(body, types::I64);
        let xs: Vec<Value> = (0..nr)
            .map(|_| fx.b.append_block_param(body, types::I32X4))
            .collect();
        fx.b.ins().jump(body, &first);
        fx.b.switch_to_block(body);
        // Weights are memory operands of the `vpxor`s: one load per use,
        // each pixel's from its own address expression (`opaque` is a zero
        // the optimiser cannot see through, so the e-graph does not merge
        // the two loads of a line into one multiply used value), which
        // leaves the registers to the accumulators and broadcasts.
        let wflags = MemFlagsData::trusted().with_readonly().with_can_move();
        for (k, &x) in xs.iter().enumerate() {
            let x = fx.b.ins().bitcast(types::I8X16, le(), x);
            let wk = if k == 0 {
                wp
            } else {
                let z = fx.mul_imm(opaque, k as i64);
                fx.b.ins().iadd(wp, z)
            };
            for r in 0..4 {
                let w = fx.b.ins().load(types::I8X16, wflags, wk, 16 * r as i32);
                let t = fx.b.ins().bxor(x, w);
                let c = fx.b.ins().popcnt(t);
                let acc = fx.b.use_var(acc8[k][r]);
                let acc = fx.b.ins().iadd(acc, c);
                fx.b.def_var(acc8[k][r], acc);
            }
        }
        let tp2 = fx.b.ins().iadd_imm_s(tp, 4);
        let wp2 = fx.b.ins().iadd_imm_s(wp, 64);
        let next = bcasts(fx, tp2, wp2);
        let go = fx.b.ins().icmp(IntCC::UnsignedLessThan, tp2, end);
        let exit = fx.b.create_block();
        fx.b.ins().brif(go, body, &next, exit, &[]);
        fx.b.seal_block(body);
        fx.b.switch_to_block(exit);
        fx.b.seal_block(exit);
        flush(fx)
    })
}

fn pixel_addr(fx: &mut Fx, base: Value, a: &StepAddr) -> (Value, i64) {
    match a.dyn_off {
        Some(o) => (fx.b.ins().iadd(base, o), a.in_imm),
        None => (base, a.in_imm),
    }
}

/// Per-channel f32 table padded to `len` entries.
fn padded(v: &[f32], len: usize) -> Vec<f32> {
    let mut out = v.to_vec();
    out.resize(len, 0.0);
    out
}

/// Emits the step; returns its number of work units (pixel tiles).
pub fn emit(
    fx: &mut Fx,
    b: &BinConv,
    src_off: usize,
    dst_off: usize,
    residual_off: Option<usize>,
) -> Result<usize, CodegenError> {
    let [kh, kw] = b.k;
    // The residual's byte offset from the output (same layout), for the
    // wide kernel's epilogue.
    let residual = residual_off
        .map(|r| {
            i32::try_from(r as i64 - dst_off as i64)
                .map_err(|_| CodegenError::Internal("residual too far from the output".into()))
        })
        .transpose()?;
    let [sh, sw] = b.s;
    let [dh, dw] = b.d;
    let [oh, ow] = b.out;
    let pixels = oh * ow;
    let nr = b.nr;
    let tiles = pixels.div_ceil(nr);
    let g_n = b.groups;
    let og = b.o / g_n;
    let nb = og.div_ceil(16);
    let o_pad = b.o + 16;
    let ktot = (b.cg * kh * kw) as i64;
    let bits = b.epi.bits();
    let cwo = b.o.div_ceil(64);
    let pix_bytes = if bits { 8 * cwo } else { 4 * b.o } as i64;

    // Pixel table: (input byte offset, correction-table byte offset).
    let (classes, class_of) = correction_classes(b);
    let mut pix = Vec::with_capacity(2 * tiles * nr);
    for p in 0..tiles * nr {
        let q = p.min(pixels - 1);
        let (i, j) = (q / ow, q % ow);
        pix.push(((i * sh * b.wp + j * sw) * b.xw * 8) as i32);
        pix.push((class_of[q] * o_pad * 4) as i32);
    }
    let pix_tab = fx.i32_data(&pix)?;
    let corr_tab = if b.zero_pad.is_some() {
        let mut t = Vec::with_capacity(classes.len() * o_pad);
        for taps in &classes {
            for o in 0..o_pad {
                let mut sum = 0i32;
                if o < b.o {
                    for &(u, v) in taps {
                        for c in 0..b.cg {
                            sum += if b.neg[((o * b.cg + c) * kh + u) * kw + v] {
                                -1
                            } else {
                                1
                            };
                        }
                    }
                }
                t.push(sum);
            }
        }
        Some(fx.i32_data(&t)?)
    } else {
        None
    };
    // The avx512 kernel reads the vector path's weight lines, re-laid per tile.
    let vector = !b.scalar || b.wide.is_some();
    let lines = weights(b, vector);
    let tables = EpiTables::new(fx, &b.epi, o_pad, b.cg * kh * kw)?;

    // Input offsets of the steps within a group, from the pixel base.
    let chunk = if vector { 4 } else { 8 };
    let per_tap = if vector { b.cg.div_ceil(32) } else { b.cwg };
    let mut offs = Vec::with_capacity(kh * kw * per_tap);
    for u in 0..kh {
        for v in 0..kw {
            for t in 0..per_tap {
                offs.push((((u * dh) * b.wp + v * dw) * b.xw * 8 + chunk * t) as i64);
            }
        }
    }
    let steps = offs.len();
    let wblock = if vector { steps * 64 } else { 16 * steps * 8 } as i64;
    let src = fx.arena_at(src_off);
    let dst = fx.arena_at(dst_off);
    let zero_words = bits && (g_n > 1 && !og.is_multiple_of(16) || nb * 16 * g_n < cwo * 64);
    let rmw = bits && g_n > 1 && !og.is_multiple_of(16);
    // A fused wide epilogue of one group, whose blocks end on words where
    // it writes bits (no unit zeroes words another unit writes into), may
    // split its channels between units (`wide::channel_parts`).
    let parts = match b.wide {
        Some(tile) if g_n == 1 && og.is_multiple_of(16) && !zero_words && b.zero_pad.is_none() => {
            channel_parts(tiles, nb, tile.mr, true).0
        }
        _ => 1,
    };
    let wide = match b.wide {
        Some(tile) => Some(wide_conv(
            fx, b, tile, parts, &lines, &offs, o_pad, ktot, rmw, pix_bytes, residual,
        )?),
        None if residual.is_some() => {
            return Err(CodegenError::Internal(
                "a fused residual needs a machine-code kernel".into(),
            ));
        }
        None => None,
    };
    let wtab = if wide.is_none() {
        Some(fx.data(lines)?)
    } else {
        None
    };

    fx.for_units(|fx, unit| {
        let (tile, part) = if parts > 1 {
            let tile = fx.b.ins().udiv_imm_u(unit, parts as i64);
            (tile, Some(fx.b.ins().urem_imm_u(unit, parts as i64)))
        } else {
            (unit, None)
        };
        let p0 = fx.mul_imm(tile, nr as i64);
        let mut bases = Vec::new();
        let mut corr = Vec::new();
        let mut outs = Vec::new();
        for k in 0..nr {
            let e = fx.add_imm(p0, k as i64);
            let e8 = fx.mul_imm(e, 8);
            let ea = fx.b.ins().iadd(pix_tab, e8);
            let off = fx.b.ins().sload32(crate::codegen::emit::mem(), ea, 0);
            bases.push(fx.b.ins().iadd(src, off));
            corr.push(match corr_tab {
                Some(ct) => {
                    let c = fx.b.ins().sload32(crate::codegen::emit::mem(), ea, 4);
                    Some(fx.b.ins().iadd(ct, c))
                }
                None => None,
            });
            let ob = fx.mul_imm(e, pix_bytes);
            let out = fx.b.ins().iadd(dst, ob);
            if zero_words {
                fx.zero_bytes(out, 8 * cwo);
            }
            outs.push(out);
        }
        fx.for_n(g_n, |fx, g| {
            let goff = fx.mul_imm(g, (b.cwg * 8) as i64);
            let gbases: Vec<Value> = bases.iter().map(|&x| fx.b.ins().iadd(x, goff)).collect();
            let o_g = fx.mul_imm(g, og as i64);
            let Some(wtab) = wtab else {
                let wide = wide.as_ref().ok_or_else(|| {
                    CodegenError::Internal("binary kernel without weights".into())
                })?;
                let mut block = |fx: &mut Fx, counts: &[[Value; 4]], blk: Value, valid| {
                    let ob = fx.mul_imm(blk, 16);
                    let o0 = fx.b.ins().iadd(o_g, ob);
                    epilogue(fx, b, &tables, counts, o0, valid, ktot, &corr, &outs, rmw)
                };
                // A channel part is a group of the kernel's weights that
                // reads the whole input (`g` is 0 here, so `gbases` are
                // the pixels' bases).
                let (kernel_group, o_first, channels) = match part {
                    Some(part) => (part, fx.mul_imm(part, (og / parts) as i64), og / parts),
                    None => (g, o_g, og),
                };
                return wide.group(
                    fx,
                    &gbases,
                    kernel_group,
                    outs[0],
                    o_first,
                    channels,
                    &mut block,
                );
            };
            let wg = fx.mul_imm(g, nb as i64 * wblock);
            let wg = fx.b.ins().iadd(wtab, wg);
            let block = |fx: &mut Fx, blk: Value, valid: usize| -> Result<(), CodegenError> {
                let ob = fx.mul_imm(blk, 16);
                let o0 = fx.b.ins().iadd(o_g, ob);
                let wb = fx.mul_imm(blk, wblock);
                let wb = fx.b.ins().iadd(wg, wb);
                let counts = if vector {
                    vector_counts(fx, &gbases, wb, &offs)?
                } else {
                    scalar_counts(fx, &gbases, wb, &offs, steps)?
                };
                epilogue(fx, b, &tables, &counts, o0, valid, ktot, &corr, &outs, rmw)
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
    Ok(tiles * parts)
}

/// The avx512 kernel of a layer, with its epilogue fused where it can be:
/// bits whose 16-bit pieces it can store whole, and f32 outputs, both
/// without zero-padding corrections (those need a per-pixel table and stay
/// in the Cranelift epilogue over the kernel's popcounts).
#[allow(clippy::too_many_arguments)]
fn wide_conv(
    fx: &mut Fx,
    b: &BinConv,
    tile: crate::codegen::kernels::wide::Tile,
    parts: usize,
    lines: &[u8],
    offs: &[i64],
    o_pad: usize,
    ktot: i64,
    rmw: bool,
    pix_bytes: i64,
    residual: Option<i32>,
) -> Result<WideConv, CodegenError> {
    let og = b.o / b.groups;
    let nb = og.div_ceil(16);
    let pad = |v: &[f32]| padded(v, o_pad);
    let epi = match &b.epi {
        _ if (b.zero_pad.is_some() || rmw) && residual.is_some() => {
            return Err(CodegenError::Internal(
                "a fused residual needs the kernel's own f32 epilogue".into(),
            ));
        }
        _ if b.zero_pad.is_some() || rmw => Epi::Counts,
        Epilogue::Threshold { dir, t } => {
            // The padding lanes are forced to +1 (bit 0): the packed
            // layout keeps a word's tail bits zero.
            let (mut d, mut h) = (dir.clone(), t.clone());
            d.resize(o_pad, 1);
            h.resize(o_pad, 0);
            let (mut s, mut e) = count_thresholds(&d, &h, ktot);
            for o in b.o..o_pad {
                (s[o], e[o]) = (0, i32::MAX);
            }
            Epi::Bits { s, e }
        }
        f32_epi => {
            // The operations of `epilogue` below, in the same order.
            let (ops, tables) = match f32_epi {
                Epilogue::Dot { alpha: None } => (vec![], vec![]),
                Epilogue::Dot { alpha: Some(a) } => (vec![FOp::Mul(0)], vec![pad(a)]),
                Epilogue::BatchNorm {
                    alpha,
                    gamma,
                    mean,
                    std,
                    beta,
                } => {
                    let i = u8::from(alpha.is_some());
                    let mut ops = alpha
                        .as_ref()
                        .map(|_| FOp::Mul(0))
                        .into_iter()
                        .collect::<Vec<_>>();
                    ops.extend([
                        FOp::Sub(i + 1),
                        FOp::Mul(i),
                        FOp::Div(i + 2),
                        FOp::Add(i + 3),
                    ]);
                    let mut tables: Vec<Vec<f32>> = alpha.iter().map(|a| pad(a)).collect();
                    tables.extend([pad(gamma), pad(mean), pad(std), pad(beta)]);
                    (ops, tables)
                }
                Epilogue::Affine { mul, bias } => {
                    (vec![FOp::Mul(0), FOp::Add(1)], vec![pad(mul), pad(bias)])
                }
                Epilogue::Threshold { .. } => unreachable!("matched above"),
            };
            let mut ops = ops;
            ops.extend(residual.map(FOp::AddAt));
            Epi::Floats {
                k: ktot as i32,
                ops,
                tables,
                last_valid: if og.is_multiple_of(16) { 16 } else { og % 16 },
            }
        }
    };
    // The weights of `parts` channel parts are laid out as that many
    // groups of `nb / parts` blocks (the lines are block-major).
    WideConv::new(
        fx,
        tile,
        b.groups * parts,
        nb / parts,
        lines,
        offs,
        epi,
        pix_bytes,
    )
}

/// Popcount sums `[pixel][vector of 4 channels]` (i32x4) of one 16-channel
/// block, vector path.
fn vector_counts(
    fx: &mut Fx,
    bases: &[Value],
    wb: Value,
    offs: &[i64],
) -> Result<Vec<[Value; 4]>, CodegenError> {
    let nr = bases.len();
    let z8 = {
        let z = fx.icty(types::I8, 0);
        fx.b.ins().splat(types::I8X16, z)
    };
    let z32 = {
        let z = fx.icty(types::I32, 0);
        fx.b.ins().splat(types::I32X4, z)
    };
    let acc8: Vec<[Variable; 4]> = (0..nr)
        .map(|_| [0; 4].map(|_| fx.var(types::I8X16, z8)))
        .collect();
    // Wide partial sums live in a stack slot, not in registers: the 16 xmm
    // registers hold the byte accumulators, the weight line and temporaries.
    let single = offs.len() <= FLUSH;
    let slot = if single {
        None
    } else {
        let ss = fx.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (64 * nr) as u32,
            4,
        ));
        for k in 0..nr {
            for r in 0..4 {
                fx.b.ins()
                    .stack_store(types::I64, z32, ss, (64 * k + 16 * r) as i32);
            }
        }
        Some(ss)
    };
    let mut last: Vec<[Option<Value>; 4]> = vec![[None; 4]; nr];
    let mut flush = |fx: &mut Fx| -> Result<(), CodegenError> {
        for k in 0..nr {
            for r in 0..4 {
                let v = fx.b.use_var(acc8[k][r]);
                let lo = fx.b.ins().uwiden_low(v);
                let hi = fx.b.ins().uwiden_high(v);
                let s16 = fx.b.ins().iadd_pairwise(lo, hi);
                let lo = fx.b.ins().swiden_low(s16);
                let hi = fx.b.ins().swiden_high(s16);
                let s32 = fx.b.ins().iadd_pairwise(lo, hi);
                match slot {
                    None => last[k][r] = Some(s32),
                    Some(ss) => {
                        let off = (64 * k + 16 * r) as i32;
                        let acc = fx.b.ins().stack_load(types::I64, types::I32X4, ss, off);
                        let acc = fx.b.ins().iadd(acc, s32);
                        fx.b.ins().stack_store(types::I64, acc, ss, off);
                    }
                }
                fx.b.def_var(acc8[k][r], z8);
            }
        }
        Ok(())
    };
    vector_steps(fx, bases, wb, offs, &acc8, &mut flush)?;
    (0..nr)
        .map(|k| {
            let v: Vec<Value> = (0..4)
                .map(|r| match slot {
                    None => last[k][r].unwrap_or(z32),
                    Some(ss) => fx.b.ins().stack_load(
                        types::I64,
                        types::I32X4,
                        ss,
                        (64 * k + 16 * r) as i32,
                    ),
                })
                .collect();
            v.try_into()
                .map_err(|_| CodegenError::Internal("vector counts".into()))
        })
        .collect()
}

/// Popcount sums of one 16-channel block, scalar `popcnt.i64` path: four
/// passes of 4 channels × `nr` pixels of i64 accumulators.
fn scalar_counts(
    fx: &mut Fx,
    bases: &[Value],
    wb: Value,
    offs: &[i64],
    steps: usize,
) -> Result<Vec<[Value; 4]>, CodegenError> {
    let nr = bases.len();
    let mut out: Vec<[Option<Value>; 4]> = vec![[None; 4]; nr];
    for q in 0..4 {
        let z = fx.ic(0);
        let acc: Vec<[Variable; 4]> = (0..nr)
            .map(|_| [0; 4].map(|_| fx.var(types::I64, z)))
            .collect();
        let wq = fx.add_imm(wb, (q * 4 * steps * 8) as i64);
        let mut body = |fx: &mut Fx, a: StepAddr| -> Result<(), CodegenError> {
            for (k, &base) in bases.iter().enumerate() {
                let (addr, imm) = pixel_addr(fx, base, &a);
                let x = fx.load(types::I64, addr, imm);
                for j in 0..4 {
                    let w = fx.b.ins().load(
                        types::I64,
                        MemFlagsData::trusted(),
                        a.w,
                        (a.w_imm + (j * steps * 8) as i64) as i32,
                    );
                    let t = fx.b.ins().bxor(x, w);
                    let c = fx.b.ins().popcnt(t);
                    let s = fx.b.use_var(acc[k][j]);
                    let s = fx.b.ins().iadd(s, c);
                    fx.b.def_var(acc[k][j], s);
                }
            }
            Ok(())
        };
        let mut flush = |_: &mut Fx| Ok(());
        segmented(fx, wq, 8, offs, 32, &mut body, &mut flush)?;
        for k in 0..nr {
            let z32 = fx.icty(types::I32, 0);
            let mut v = fx.b.ins().splat(types::I32X4, z32);
            for j in 0..4 {
                let s = fx.b.use_var(acc[k][j]);
                let s = fx.b.ins().ireduce(types::I32, s);
                v = fx.b.ins().insertlane(v, s, j as u8);
            }
            out[k][q] = Some(v);
        }
    }
    out.into_iter()
        .map(|a| {
            let v: Vec<Value> = a.into_iter().flatten().collect();
            v.try_into()
                .map_err(|_| CodegenError::Internal("scalar counts".into()))
        })
        .collect()
}

/// Weight bits, re-laid for the kernel.
///
/// Vector: `[g][block][step][16 lanes]` u32, step = (u, v, 32-bit chunk).
/// Scalar: `[g][block][16 channels][step]` u64, step = (u, v, 64-bit word).
fn weights(b: &BinConv, vector: bool) -> Vec<u8> {
    let [kh, kw] = b.k;
    let og = b.o / b.groups;
    let nb = og.div_ceil(16);
    let bits = if vector { 32 } else { 64 };
    let per_tap = b.cg.div_ceil(bits);
    let steps = kh * kw * per_tap;
    // Sign bits packed along the input channels once, `[o][u][v][word]`, so
    // that every kernel word below is a shift (the bool-per-weight layout
    // made this loop a large part of the compile time of big models).
    let cw = b.cg.div_ceil(64);
    let mut packed = vec![0u64; b.o * kh * kw * cw];
    let taps = kh * kw;
    for (o, slab) in b.neg.chunks_exact(b.cg * taps).enumerate() {
        for tap in 0..taps {
            let row = &mut packed[(o * taps + tap) * cw..][..cw];
            for (c, n) in slab[tap..].iter().step_by(taps).enumerate() {
                row[c / 64] |= u64::from(*n) << (c % 64);
            }
        }
    }
    let word = |o: usize, u: usize, v: usize, t: usize| -> u64 {
        let row = &packed[((o * kh + u) * kw + v) * cw..][..cw];
        if bits == 64 {
            row[t]
        } else {
            (row[t / 2] >> (32 * (t % 2))) & 0xffff_ffff
        }
    };
    let mut out = Vec::with_capacity(b.groups * nb * steps * 16 * bits / 8);
    for g in 0..b.groups {
        for blk in 0..nb {
            if vector {
                for u in 0..kh {
                    for v in 0..kw {
                        for t in 0..per_tap {
                            for lane in 0..16 {
                                let ol = blk * 16 + lane;
                                let x = if ol < og {
                                    word(g * og + ol, u, v, t)
                                } else {
                                    0
                                };
                                out.extend_from_slice(&(x as u32).to_le_bytes());
                            }
                        }
                    }
                }
            } else {
                for lane in 0..16 {
                    let ol = blk * 16 + lane;
                    for u in 0..kh {
                        for v in 0..kw {
                            for t in 0..per_tap {
                                let x = if ol < og {
                                    word(g * og + ol, u, v, t)
                                } else {
                                    0
                                };
                                out.extend_from_slice(&x.to_le_bytes());
                            }
                        }
                    }
                }
            }
        }
    }
    if out.is_empty() {
        out.resize(64, 0);
    }
    out
}
