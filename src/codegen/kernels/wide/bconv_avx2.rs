//! The binary convolution micro-kernel for AVX2 machines (the `avx2` kernel
//! path): the same calling convention, weight layout and results as the
//! AVX-512 kernel ([`super::bconv`]), in 256-bit VEX code that runs on any
//! x86-64 CPU with AVX2 (Haswell and later, every Zen).
//!
//! AVX2 has no vector popcount, so the kernel counts bits with the classic
//! nibble look-up (Muła, Kurz and Lemire, "Faster population counts using
//! AVX2 instructions", 2018): `vpshufb` looks up the popcount of each 4-bit
//! nibble in a 16-entry table held in a register, and the per-byte counts
//! accumulate in bytes. A byte gains at most 8 per step, so after at most
//! 31 steps (≤ 248) the byte counts are *flushed*: `vpmaddubsw` with 1s
//! sums byte pairs into 16-bit lanes, `vpmaddwd` with 1s sums those into
//! the 32-bit lane of each output channel, and the result is added to the
//! channel's total in a stack scratch area.
//!
//! * **Register block**: a 16-channel block is two ymm halves, so a tile
//!   of `mr` blocks × `nr` pixels has `2·mr·nr` byte accumulators (at most
//!   [`MAX_ACCUMULATORS`]); the look-up table, the nibble mask, one
//!   broadcast and two temporaries take the other five of the 16 ymm
//!   registers. The weights are memory operands of `vpxor` (the two load
//!   ports have room: the look-up's `vpshufb`s bound the loop), so no
//!   register holds them.
//! * **K loop**, one step (32 input channels of one tap) per iteration, as
//!   on AVX-512: the step's input offset from the table of `i32` at `rdx`,
//!   indexed by a negative counter that ends at zero; per pixel one
//!   `vpbroadcastd` of its 32-bit chunk, then per half `vpxor`, `vpsrlw`,
//!   2 × `vpand`, 2 × `vpshufb` and 2 × `vpaddb`: 8 vector µops per 256
//!   binary MACs. An inner counter (`r13`) cuts the loop into chunks of 31
//!   steps, each followed by a flush.
//! * **Epilogues** read the 32-bit totals back from the scratch area:
//!   counts are copied out; bits are `(count ^ s) > e` by `vpcmpgtd`, and
//!   `vmovmskps` of the two halves gives the block's 16 bits; f32 values
//!   are `K − 2·count` converted exactly, then the epilogue's operations in
//!   order, the lanes of a group's last, partial block stored one by one.
//!
//! Everything is VEX-encoded: no zmm, no mask registers, no EVEX, so the
//! code decodes on CPUs without AVX-512 (`tests/jit_asm.rs` checks this).

use iced_x86::IcedError;
use iced_x86::code_asm::registers::gpr32::{eax, r14d};
use iced_x86::code_asm::registers::gpr64::*;
use iced_x86::code_asm::registers::xmm::get_xmm;
use iced_x86::code_asm::registers::ymm::get_ymm;
use iced_x86::code_asm::{
    AsmMemoryOperand, AsmRegister64, AsmRegisterXmm, AsmRegisterYmm, CodeAssembler, dword_ptr,
    qword_ptr, word_ptr, ymmword_ptr,
};

use super::Isa;
use super::bconv::{FOp, Out, Spec};
use crate::codegen::CodegenError;

/// Most pixels per tile.
pub const MAX_PIXELS: usize = 5;
/// Most byte accumulators (`2·mr·nr`): 16 ymm registers less five fixed.
pub const MAX_ACCUMULATORS: usize = 10;
/// Steps between flushes of the byte accumulators: `8·31 = 248 ≤ 255`.
const CHUNK: u64 = 31;

/// Registers for the pixel bases.
const BASES: [AsmRegister64; MAX_PIXELS] = [r9, r11, rbx, rbp, r12];
/// The callee-saved ones among them, pushed and popped.
const SAVED_BASES: [AsmRegister64; 3] = [rbx, rbp, r12];

/// The fixed vector registers.
const LUT: usize = 15;
const NIBBLE: usize = 14;
const BCAST: usize = 13;
const T0: usize = 12;
const T1: usize = 11;

/// The popcounts of the 16 nibbles, as the two quadwords of the table.
const LUT_LO: u64 = 0x0302_0201_0201_0100;
const LUT_HI: u64 = 0x0403_0302_0302_0201;

fn ymm(i: usize) -> AsmRegisterYmm {
    get_ymm(iced_x86::Register::YMM0 + i as u32)
        .unwrap_or(iced_x86::code_asm::registers::ymm::ymm15)
}

fn xmm(i: usize) -> AsmRegisterXmm {
    get_xmm(iced_x86::Register::XMM0 + i as u32)
        .unwrap_or(iced_x86::code_asm::registers::xmm::xmm15)
}

fn asm_err(e: IcedError) -> CodegenError {
    CodegenError::Internal(format!("assembling the avx2 binary kernel: {e}"))
}

/// Assembles the kernel of `spec` (whose tile is for [`Isa::Avx2`]).
pub fn assemble(spec: &Spec) -> Result<Vec<u8>, CodegenError> {
    if spec.tile.isa != Isa::Avx2 || !spec.tile.fits() || spec.steps == 0 || spec.blocks == 0 {
        return Err(CodegenError::Internal(format!(
            "avx2 binary kernel: unsupported shape {spec:?}"
        )));
    }
    let table_bytes = i32::try_from(4 * spec.steps)
        .map_err(|_| CodegenError::Internal("avx2 binary kernel: too many steps".into()))?;
    let mut a = CodeAssembler::new(64).map_err(asm_err)?;
    emit(&mut a, spec, table_bytes).map_err(asm_err)?;
    a.assemble(0).map_err(asm_err)
}

/// Where accumulator `(m, h, n)` (block, half, pixel) keeps its total.
struct Scratch {
    nr: usize,
}

impl Scratch {
    fn index(&self, m: usize, h: usize, n: usize) -> usize {
        (2 * m + h) * self.nr + n
    }
    fn at(&self, m: usize, h: usize, n: usize) -> AsmMemoryOperand {
        ymmword_ptr(rsp + 32 * self.index(m, h, n) as i32)
    }
}

fn emit(a: &mut CodeAssembler, spec: &Spec, table_bytes: i32) -> Result<(), IcedError> {
    let nr = spec.tile.nr;
    let bases = &BASES[..nr];
    let mut saved: Vec<AsmRegister64> = SAVED_BASES
        .iter()
        .copied()
        .filter(|r| bases.contains(r))
        .collect();
    saved.extend([r13, r14]);
    for &r in &saved {
        a.push(r)?;
    }
    // The largest tile's totals; a narrower last m-tile uses a prefix.
    let frame = 32 * 2 * spec.tile.mr * nr;
    a.sub(rsp, frame as i32)?;
    for (n, &r) in bases.iter().enumerate() {
        a.mov(r, qword_ptr(rdi + 8 * n as i32))?;
    }
    a.mov(rax, LUT_LO)?;
    a.vmovq(xmm(LUT), rax)?;
    a.mov(rax, LUT_HI)?;
    a.vpinsrq(xmm(LUT), xmm(LUT), rax, 1)?;
    a.vinserti128(ymm(LUT), ymm(LUT), xmm(LUT), 1)?;
    a.mov(eax, 0x0f0f_0f0f)?;
    a.vmovd(xmm(NIBBLE), eax)?;
    a.vpbroadcastd(ymm(NIBBLE), xmm(NIBBLE))?;
    super::m_tile_loops(a, &spec.m_tiles(), r10, |a, tmr, last| {
        m_tile(a, spec, tmr, table_bytes, last)
    })?;
    a.add(rsp, frame as i32)?;
    for &r in saved.iter().rev() {
        a.pop(r)?;
    }
    a.vzeroupper()?;
    a.ret()?;
    Ok(())
}

/// One m-tile: the chunked K loop into the scratch totals, then the
/// epilogue; advances `rcx` (and `r8`) to the next tile, and `rsi` ends at
/// the next tile's weights by construction of the layout.
fn m_tile(
    a: &mut CodeAssembler,
    spec: &Spec,
    mr: usize,
    table_bytes: i32,
    last: bool,
) -> Result<(), IcedError> {
    let nr = spec.tile.nr;
    let scratch = Scratch { nr };
    let acc = |m: usize, h: usize, n: usize| ymm(scratch.index(m, h, n));
    let (t0, t1, bcast) = (ymm(T0), ymm(T1), ymm(BCAST));
    let accumulators = 2 * mr * nr;
    a.vpxor(t0, t0, t0)?;
    for i in 0..accumulators {
        a.vmovdqu(ymmword_ptr(rsp + 32 * i as i32), t0)?;
    }
    a.mov(rdi, -i64::from(table_bytes))?;
    let mut chunk = a.create_label();
    let mut k_loop = a.create_label();
    let mut flush = a.create_label();
    a.set_label(&mut chunk)?;
    for i in 0..accumulators {
        a.vpxor(ymm(i), ymm(i), ymm(i))?;
    }
    a.mov(r13, CHUNK)?;
    a.set_label(&mut k_loop)?;
    a.movsxd(rax, dword_ptr(rdx + rdi + table_bytes))?;
    for (n, &base) in BASES[..nr].iter().enumerate() {
        a.vpbroadcastd(bcast, dword_ptr(base + rax))?;
        for m in 0..mr {
            for h in 0..2 {
                a.vpxor(t0, bcast, ymmword_ptr(rsi + (64 * m + 32 * h) as i32))?;
                a.vpsrlw(t1, t0, 4)?;
                a.vpand(t0, t0, ymm(NIBBLE))?;
                a.vpand(t1, t1, ymm(NIBBLE))?;
                a.vpshufb(t0, ymm(LUT), t0)?;
                a.vpshufb(t1, ymm(LUT), t1)?;
                a.vpaddb(acc(m, h, n), acc(m, h, n), t0)?;
                a.vpaddb(acc(m, h, n), acc(m, h, n), t1)?;
            }
        }
    }
    a.add(rsi, 64 * mr as i32)?;
    a.add(rdi, 4)?;
    a.jz(flush)?;
    a.dec(r13)?;
    a.jnz(k_loop)?;
    a.set_label(&mut flush)?;
    // Bytes → 32-bit lanes: 1s as bytes (|−1|) and as words (−1 >> 15).
    let (ones8, ones16) = (t0, t1);
    a.vpcmpeqd(bcast, bcast, bcast)?;
    a.vpabsb(ones8, bcast)?;
    a.vpsrlw(ones16, bcast, 15)?;
    for m in 0..mr {
        for h in 0..2 {
            for n in 0..nr {
                let x = acc(m, h, n);
                a.vpmaddubsw(x, x, ones8)?;
                a.vpmaddwd(x, x, ones16)?;
                a.vpaddd(x, x, scratch.at(m, h, n))?;
                a.vmovdqu(scratch.at(m, h, n), x)?;
            }
        }
    }
    a.test(rdi, rdi)?;
    a.jnz(chunk)?;
    epilogue(a, spec, mr, last, &scratch)
}

fn epilogue(
    a: &mut CodeAssembler,
    spec: &Spec,
    mr: usize,
    last: bool,
    scratch: &Scratch,
) -> Result<(), IcedError> {
    let nr = spec.tile.nr;
    let x = ymm(T0);
    match spec.out {
        Out::Counts { pixel_stride } => {
            for n in 0..nr {
                for m in 0..mr {
                    for h in 0..2 {
                        a.vmovdqu(x, scratch.at(m, h, n))?;
                        let off = n as i32 * pixel_stride + (64 * m + 32 * h) as i32;
                        a.vmovdqu(ymmword_ptr(rcx + off), x)?;
                    }
                }
            }
            a.add(rcx, 64 * mr as i32)?;
        }
        Out::Bits {
            pixel_stride,
            e_offset,
        } => {
            // The accumulators are free: s and e of both halves of block m.
            let s = |h: usize| ymm(h);
            let e = |h: usize| ymm(2 + h);
            for m in 0..mr {
                for h in 0..2 {
                    let off = (64 * m + 32 * h) as i32;
                    a.vmovdqu(s(h), ymmword_ptr(r8 + off))?;
                    a.vmovdqu(e(h), ymmword_ptr(r8 + (e_offset + off)))?;
                }
                for n in 0..nr {
                    for (h, bits) in [(0, eax), (1, r14d)] {
                        a.vpxor(x, s(h), scratch.at(m, h, n))?;
                        a.vpcmpgtd(x, x, e(h))?;
                        a.vmovmskps(bits, x)?;
                    }
                    a.shl(r14d, 8)?;
                    a.or(eax, r14d)?;
                    let off = n as i32 * pixel_stride + 2 * m as i32;
                    a.mov(
                        word_ptr(rcx + off),
                        iced_x86::code_asm::registers::gpr16::ax,
                    )?;
                }
            }
            a.add(rcx, 2 * mr as i32)?;
            a.add(r8, 64 * mr as i32)?;
        }
        Out::Floats {
            pixel_stride,
            k,
            ref ops,
            table_stride,
            last_valid,
        } => {
            let kv = ymm(T1);
            a.mov(eax, k)?;
            a.vmovd(xmm(T1), eax)?;
            a.vpbroadcastd(kv, xmm(T1))?;
            for m in 0..mr {
                // Channels of this block the kernel stores: 16, or fewer in
                // a group's last block.
                let valid = if last && m + 1 == mr { last_valid } else { 16 };
                for h in 0..2 {
                    let lanes = valid.saturating_sub(8 * h).min(8);
                    if lanes == 0 {
                        continue;
                    }
                    for n in 0..nr {
                        a.vmovdqu(x, scratch.at(m, h, n))?;
                        a.vpaddd(x, x, x)?;
                        a.vpsubd(x, kv, x)?;
                        a.vcvtdq2ps(x, x)?;
                        let dst = n as i32 * pixel_stride + (64 * m + 32 * h) as i32;
                        let lane0 = (64 * m + 32 * h) as i32;
                        for op in ops {
                            let at =
                                |t: u8| ymmword_ptr(r8 + (i32::from(t) * table_stride + lane0));
                            match *op {
                                FOp::Mul(t) => a.vmulps(x, x, at(t))?,
                                FOp::Sub(t) => a.vsubps(x, x, at(t))?,
                                FOp::Div(t) => a.vdivps(x, x, at(t))?,
                                FOp::Add(t) => a.vaddps(x, x, at(t))?,
                                FOp::AddAt(delta) => {
                                    a.vaddps(x, x, ymmword_ptr(rcx + (delta + dst)))?
                                }
                            }
                        }
                        if lanes == 8 {
                            a.vmovups(ymmword_ptr(rcx + dst), x)?;
                        } else {
                            // The other lanes belong to the next group or
                            // pixel: store the valid ones one by one.
                            a.vmovups(scratch.at(m, h, n), x)?;
                            let from = 32 * scratch.index(m, h, n) as i32;
                            for lane in 0..lanes as i32 {
                                a.mov(eax, dword_ptr(rsp + (from + 4 * lane)))?;
                                a.mov(dword_ptr(rcx + (dst + 4 * lane)), eax)?;
                            }
                        }
                    }
                }
            }
            a.add(rcx, 64 * mr as i32)?;
            a.add(r8, 64 * mr as i32)?;
        }
    }
    Ok(())
}
