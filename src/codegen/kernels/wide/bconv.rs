//! The binary convolution micro-kernel: a register tile of `mr` × 16 output
//! channels by `nr` pixels, the K loop over the receptive field, and the
//! popcount or threshold epilogue (see the parent module's doc).
//!
//! Calling convention (System V): `kernel(bases, weights, steps, out, epi)`
//! * `rdi` `bases`: `nr` input pixel addresses (`u64`), the group's first
//!   word already added;
//! * `rsi` `weights`: the group's tile-laid weights, `[m-tile][step][mr
//!   lines]` of 64 bytes (a last, narrower m-tile has its own `mr`);
//! * `rdx` `steps`: `steps` `i32` byte offsets of each step's 32-bit input
//!   chunk from the pixel address;
//! * `rcx` `out`: counts, `i32` at `out + n·pixel_stride + 4·channel`, or
//!   bits, 16 per block at `out + n·pixel_stride + 2·block`;
//! * `r8` `epi`: for bits, `s` then (at `+e_offset`) `e`, `i32` per channel:
//!   bit 1 (−1) iff `(count ^ s) > e`; for f32 outputs, the tables of the
//!   epilogue's operations ([`FOp`]), `f32` per channel.

use super::zmm;
use iced_x86::IcedError;
use iced_x86::code_asm::registers::gpr32::eax;
use iced_x86::code_asm::registers::gpr64::*;
use iced_x86::code_asm::registers::k::{k1, k2};
use iced_x86::code_asm::{AsmRegister64, CodeAssembler, dword_ptr, word_ptr, zmmword_ptr};

use super::{Isa, Tile};
use crate::codegen::CodegenError;

/// Most pixels per tile: the general-purpose registers free for pixel bases.
pub const MAX_PIXELS: usize = 8;

/// Registers for the pixel bases (the rest hold the loop state).
const BASES: [AsmRegister64; MAX_PIXELS] = [r9, r11, rbx, rbp, r12, r13, r14, r15];
/// The callee-saved ones among them, pushed and popped.
const SAVED: [AsmRegister64; 6] = [rbx, rbp, r12, r13, r14, r15];

/// One f32 operation of a fused epilogue, with its per-channel table:
/// `y = y op table[channel]`, in the interpreter's order (no FMA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FOp {
    /// `y · t`.
    Mul(u8),
    /// `y − t`.
    Sub(u8),
    /// `y / t`.
    Div(u8),
    /// `y + t`.
    Add(u8),
    /// `y + r`, `r` the f32 at this byte offset from the output value, in a
    /// buffer of the output's layout (a fused residual shortcut).
    AddAt(i32),
}

/// How the kernel leaves its results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// `i32` popcounts of every channel, `pixel_stride` bytes per pixel.
    Counts {
        /// Bytes between the pixels' count rows.
        pixel_stride: i32,
    },
    /// Packed bits via per-channel thresholds on the popcounts.
    Bits {
        /// Bytes between the pixels' output words.
        pixel_stride: i32,
        /// Byte offset of the `e` table from the `s` table.
        e_offset: i32,
    },
    /// f32 values `ops(f32(K − 2·count))` of every channel; the tables of
    /// `ops` are `table_stride` bytes apart from `epi`.
    Floats {
        /// Bytes between the pixels' output rows.
        pixel_stride: i32,
        /// `K`, the receptive field in bits.
        k: i32,
        /// The operations after the conversion.
        ops: Vec<FOp>,
        /// Bytes between the tables.
        table_stride: i32,
        /// Valid channels of the last block (16 = all): the rest are not
        /// stored (they belong to the next group or pixel).
        last_valid: usize,
    },
}

/// One kernel's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Register tile.
    pub tile: Tile,
    /// 16-channel blocks per group.
    pub blocks: usize,
    /// Receptive-field steps (32-bit input chunks).
    pub steps: usize,
    /// The epilogue.
    pub out: Out,
}

impl Spec {
    /// The m-tiles in order: `(blocks per tile, count)`; see
    /// [`super::m_tiles`].
    pub fn m_tiles(&self) -> Vec<(usize, usize)> {
        super::m_tiles(
            self.blocks,
            self.tile.mr,
            matches!(self.out, Out::Floats { last_valid, .. } if last_valid < 16),
        )
    }
}

fn asm_err(e: IcedError) -> CodegenError {
    CodegenError::Internal(format!("assembling the avx512 binary kernel: {e}"))
}

/// Assembles the kernel for the tile's instruction set; returns its bytes.
pub fn assemble(spec: &Spec) -> Result<Vec<u8>, CodegenError> {
    if spec.tile.isa == Isa::Avx2 {
        return super::bconv_avx2::assemble(spec);
    }
    let nr = spec.tile.nr;
    if !spec.tile.fits() || spec.steps == 0 || spec.blocks == 0 {
        return Err(CodegenError::Internal(format!(
            "avx512 binary kernel: unsupported shape {spec:?}"
        )));
    }
    let steps = spec.steps;
    let table_bytes = i32::try_from(4 * steps)
        .map_err(|_| CodegenError::Internal("avx512 binary kernel: too many steps".into()))?;
    let mut a = CodeAssembler::new(64).map_err(asm_err)?;
    emit(&mut a, spec, nr, table_bytes).map_err(asm_err)?;
    a.assemble(0).map_err(asm_err)
}

fn emit(a: &mut CodeAssembler, spec: &Spec, nr: usize, table_bytes: i32) -> Result<(), IcedError> {
    let bases = &BASES[..nr];
    let saved: Vec<AsmRegister64> = SAVED
        .iter()
        .copied()
        .filter(|r| bases.contains(r))
        .collect();
    for &r in &saved {
        a.push(r)?;
    }
    for (n, &r) in bases.iter().enumerate() {
        a.mov(r, qword_at(rdi, 8 * n as i32))?;
    }
    // One m-tile: `tmr` blocks × `nr` pixels; r10 counts its repeats.
    super::m_tile_loops(a, &spec.m_tiles(), r10, |a, tmr, last| {
        m_tile(a, spec, tmr, nr, table_bytes, last)
    })?;
    for &r in saved.iter().rev() {
        a.pop(r)?;
    }
    a.vzeroupper()?;
    a.ret()?;
    Ok(())
}

fn qword_at(base: AsmRegister64, off: i32) -> iced_x86::code_asm::AsmMemoryOperand {
    iced_x86::code_asm::qword_ptr(base + off)
}

/// One m-tile: zero the accumulators, run the K loop, write the results and
/// advance `rcx` (and `r8`) to the next tile; `rsi` ends at the next tile's
/// weights by construction of the layout.
fn m_tile(
    a: &mut CodeAssembler,
    spec: &Spec,
    mr: usize,
    nr: usize,
    table_bytes: i32,
    last: bool,
) -> Result<(), IcedError> {
    let acc = |m: usize, n: usize| zmm(m * nr + n);
    let w = |m: usize| zmm(mr * nr + m);
    let bcast = |n: usize| zmm(mr * nr + mr + n % 2);
    let temps = 32 - (mr * nr + mr + 2);
    let temp = |i: usize| zmm(mr * nr + mr + 2 + i % temps);
    for m in 0..mr {
        for n in 0..nr {
            a.vpxord(acc(m, n), acc(m, n), acc(m, n))?;
        }
    }
    // rdi runs from −4·steps to 0 over the offset table at rdx.
    a.mov(rdi, -i64::from(table_bytes))?;
    let mut k_loop = a.create_label();
    a.set_label(&mut k_loop)?;
    a.movsxd(rax, dword_ptr(rdx + rdi + table_bytes))?;
    for m in 0..mr {
        a.vmovdqa32(w(m), zmmword_ptr(rsi + 64 * m as i32))?;
    }
    let mut t = 0;
    for (n, &base) in BASES[..nr].iter().enumerate() {
        a.vpbroadcastd(bcast(n), dword_ptr(base + rax))?;
        for m in 0..mr {
            let x = temp(t);
            t += 1;
            a.vpxord(x, bcast(n), w(m))?;
            a.vpopcntd(x, x)?;
            a.vpaddd(acc(m, n), acc(m, n), x)?;
        }
    }
    a.add(rsi, 64 * mr as i32)?;
    a.add(rdi, 4)?;
    a.jnz(k_loop)?;
    match spec.out {
        Out::Floats {
            pixel_stride,
            k,
            ref ops,
            table_stride,
            last_valid,
        } => {
            // dot = K − 2·count, converted exactly (|dot| < 2²⁴), then the
            // epilogue's operations with the tables as memory operands.
            let kv = bcast(1);
            a.mov(eax, k)?;
            a.vpbroadcastd(kv, eax)?;
            let masked = last && last_valid < 16;
            if masked {
                a.mov(eax, (1u32 << last_valid) - 1)?;
                a.kmovw(k2, eax)?;
            }
            for m in 0..mr {
                for n in 0..nr {
                    let x = temp(n);
                    a.vpaddd(x, acc(m, n), acc(m, n))?;
                    a.vpsubd(x, kv, x)?;
                    a.vcvtdq2ps(x, x)?;
                    for op in ops {
                        let at =
                            |t: u8| zmmword_ptr(r8 + (i32::from(t) * table_stride + 64 * m as i32));
                        match *op {
                            FOp::Mul(t) => a.vmulps(x, x, at(t))?,
                            FOp::Sub(t) => a.vsubps(x, x, at(t))?,
                            FOp::Div(t) => a.vdivps(x, x, at(t))?,
                            FOp::Add(t) => a.vaddps(x, x, at(t))?,
                            FOp::AddAt(delta) => a.vaddps(
                                x,
                                x,
                                zmmword_ptr(
                                    rcx + (delta + n as i32 * pixel_stride + 64 * m as i32),
                                ),
                            )?,
                        }
                    }
                    let dst = zmmword_ptr(rcx + (n as i32 * pixel_stride + 64 * m as i32));
                    if masked && m + 1 == mr {
                        a.vmovups(dst.k2(), x)?;
                    } else {
                        a.vmovups(dst, x)?;
                    }
                }
            }
            a.add(rcx, 64 * mr as i32)?;
            a.add(r8, 64 * mr as i32)?;
        }
        Out::Counts { pixel_stride } => {
            for n in 0..nr {
                for m in 0..mr {
                    let off = n as i32 * pixel_stride + 64 * m as i32;
                    a.vmovdqu32(zmmword_ptr(rcx + off), acc(m, n))?;
                }
            }
            a.add(rcx, 64 * mr as i32)?;
        }
        Out::Bits {
            pixel_stride,
            e_offset,
        } => {
            // The weight registers are free now: s and e of block m.
            let (s, e) = (w(0), bcast(0));
            for m in 0..mr {
                a.vmovdqu32(s, zmmword_ptr(r8 + 64 * m as i32))?;
                a.vmovdqu32(e, zmmword_ptr(r8 + (e_offset + 64 * m as i32)))?;
                for n in 0..nr {
                    let x = temp(n);
                    a.vpxord(x, acc(m, n), s)?;
                    a.vpcmpgtd(k1, x, e)?;
                    let off = n as i32 * pixel_stride + 2 * m as i32;
                    a.kmovw(word_ptr(rcx + off), k1)?;
                }
            }
            a.add(rcx, 2 * mr as i32)?;
            a.add(r8, 64 * mr as i32)?;
        }
    }
    Ok(())
}

/// Re-lays the weight lines of the vector layout of `kernels::binary`
/// (`[group][block][step]` lines of 16 × u32) per tile:
/// `[group][m-tile][step][block in tile]`.
pub fn tile_weights(lines: &[u8], groups: usize, spec: &Spec) -> Vec<u8> {
    let (nb, steps) = (spec.blocks, spec.steps);
    let line = |g: usize, blk: usize, s: usize| {
        let at = ((g * nb + blk) * steps + s) * 64;
        &lines[at..at + 64]
    };
    let mut out = Vec::with_capacity(groups * nb * steps * 64);
    for g in 0..groups {
        let mut b0 = 0;
        for (tmr, count) in spec.m_tiles() {
            for _ in 0..count {
                for s in 0..steps {
                    for m in 0..tmr {
                        out.extend_from_slice(line(g, b0 + m, s));
                    }
                }
                b0 += tmr;
            }
        }
    }
    out
}
