//! The f32 FMA micro-kernel of the real-valued layers (`conv2d`, `dense`,
//! and `weights=binary` layers over real inputs, whose `α·sign(W)` is just a
//! constant real weight here) on the `avx512` path.
//!
//! Implicit GEMM straight from the channels-last, zero-padded input (no
//! im2col): `y[p, o] = Σ_k w[o, k] · x[base_p + off_k]` with one `i32`
//! byte offset per receptive-field step `k = (u, v, c)` in a table, the
//! same scheme as the binary kernel ([`super::bconv`]).
//!
//! * **Register block** `mr × nr`: `mr` zmm vectors of 16 output channels
//!   by `nr` pixels of one output row, `mr·nr` accumulators, `mr` weight
//!   registers and two broadcast registers (`mr·nr + mr + 2 ≤ 32`).
//! * **K loop**, one step per iteration: `mr` weight loads, then per pixel
//!   one `vbroadcastss` of the pixel's input value and `mr` `vfmadd231ps`.
//!   The machine issues one 512-bit FMA per cycle (measured: a loop of 12
//!   independent `vfmadd231ps zmm` chains runs at 0.95–1.10 per cycle), so
//!   the block needs ≥ 4 independent accumulators to hide the FMA latency
//!   and few enough loads per FMA (`(mr + nr) / (mr·nr)`) that the load
//!   ports never limit. The order of `k` does not matter to the block, so
//!   an odd `K` (the Bi-Real stem's 3·7·7 = 147) costs nothing: there is no
//!   vector over `K` to pad.
//! * **Tile choice** ([`FTile::choose`]): 4 × 6 for layers with 64 or more
//!   channels per group: 24 accumulators and the fewest loads per FMA of
//!   the tiles that fit (0.42). Measured on the stem (`cargo bench --bench
//!   fconv` with the tile forced, all tiles in one process, the machine
//!   loaded by other jobs): 4 × 6 at 86–91% of the same-round FMA peak,
//!   4 × 5 at 85–91%, 3 × 8 at 77–83%, 2 × 14 at 79–84% (its 18.8 KB
//!   m-tile of weights stays in the 32 KB L1, but the broadcasts cost more
//!   than L2 traffic does), 1 × 28 at 68–69%. Fewer channels take 3 × 8,
//!   2 × 14 or 1 × 28, rows of 7, 14 or 28 pixels 3 × 7 (no tail; on
//!   Bi-Real-Net-18's three 1 × 1 downsampling layers, alternating runs of
//!   `onebit bench`: 148–152 µs vs 178–204 µs, 150–184 vs 155–221, 198–211
//!   vs 229–294), and a single pixel (dense layers at batch 1, where
//!   the weights stream from memory whatever the block) 8 × 1: eight
//!   independent accumulator chains. The pixels of a tile lie in one output
//!   row, so pixel `n`'s input is at `base + n · sw · C · 4` and its output
//!   at `out + n · O · 4`: constant displacements, one base register, and
//!   no table of pixel addresses. A row's last `ow mod nr` pixels get a
//!   kernel of their own (`nr` = the rest), so no pixel outside the output
//!   is read or written.
//! * **Weights** are laid out per tile at compile time, `[group][m-tile]
//!   [step][mr lines of 16 × f32]` (zeros past the group's channels), so
//!   the loop walks them with one pointer.
//! * **Epilogue**: the bias and the per-channel ops the planner fused into
//!   the layer (a folded `batchnorm` `γ·(y − μ)/σ + β`, an `affine`
//!   `m·y + b`, a `prelu`), each an IEEE operation with its table as a
//!   memory operand in the interpreter's order ([`EpiOp`]), so a fused op
//!   gives exactly what the separate elementwise step would; then the
//!   store, a group's partial last block through the mask `k1` (its other
//!   lanes belong to the next group or pixel). When a `sign` follows (one
//!   group), the kernel packs instead: `vcmpps` (not `y ≥ 0`, so negatives
//!   and NaN give bit 1, `sign`'s −1) into `k2`, masked by `k1` for a
//!   partial block, and `kmovw` of the 16 bits into the packed output; the
//!   rest of each pixel's last word is zeroed.
//!
//! Exactness: the products are fused into the sums and the sums run in the
//! kernel's order, so results differ from the interpreter's within the
//! bound of `ir-spec/codegen.md` ("Exactness").
//!
//! Calling convention (System V), a leaf without stack use:
//! `kernel(input, weights, steps, out, tables)`:
//! * `rdi` `input`: the tile's first pixel (receptive-field origin, group
//!   channel offset added); `rsi` `weights`: the group's tile-laid weights;
//!   `rdx` `steps`: the `i32` byte offsets; `rcx` `out`: the first pixel's
//!   output at the group's first channel; `r8` `tables`: the first table at
//!   the group's first channel, the other tables `table_stride` bytes
//!   apart (unused without epilogue operations).

use super::zmm;
use iced_x86::IcedError;
use iced_x86::code_asm::registers::gpr32::eax;
use iced_x86::code_asm::registers::gpr64::*;
use iced_x86::code_asm::registers::k::{k1, k2};
use iced_x86::code_asm::{CodeAssembler, dword_ptr, word_ptr, zmmword_ptr};

use crate::codegen::CodegenError;

/// A register tile: `mr` vectors of 16 output channels × `nr` pixels of
/// one output row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FTile {
    /// 16-channel blocks per tile.
    pub mr: usize,
    /// Pixels per tile.
    pub nr: usize,
}

impl FTile {
    /// The tile for `blocks` 16-channel blocks per group and output rows
    /// of `row` pixels (see the module doc).
    pub fn choose(blocks: usize, row: usize) -> FTile {
        if row <= 1 {
            return FTile {
                mr: blocks.clamp(1, 8),
                nr: 1,
            };
        }
        let mr = blocks.clamp(1, 4);
        // Short rows of 7, 14 or 28 pixels (ResNet's 1 × 1 downsampling
        // convolutions) would leave a tail of 1, 2 or 4 pixels of 4 × 6,
        // which streams the layer's weights once more for few pixels:
        // 3 × 7 covers them whole.
        if mr == 4 && row <= 28 && !row.is_multiple_of(6) && row.is_multiple_of(7) {
            return FTile { mr: 3, nr: 7 };
        }
        let nr = [28, 14, 8, 6][mr - 1];
        FTile {
            mr,
            nr: nr.min(row),
        }
    }

    /// Whether the tile fits the registers.
    pub fn fits(self) -> bool {
        self.mr >= 1 && self.nr >= 1 && self.mr * self.nr + self.mr + 2 <= 32
    }
}

/// One operation of the epilogue, `y = y op table[channel]`; the tables
/// are `table_stride` bytes apart from the kernel's `r8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpiOp {
    /// `y + t` (the bias, a batchnorm's β, an affine's `b`).
    Add(u8),
    /// `y − t`.
    Sub(u8),
    /// `t · y`.
    Mul(u8),
    /// `y / t`.
    Div(u8),
    /// `y ≥ 0 ? y : t · y` (false for NaN, as the interpreter's `prelu`).
    PRelu(u8),
}

/// One kernel's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Register tile (`nr` = the pixels this kernel computes).
    pub tile: FTile,
    /// 16-channel blocks per group.
    pub blocks: usize,
    /// Receptive-field steps.
    pub steps: usize,
    /// Bytes between consecutive pixels' inputs.
    pub pixel_in: i32,
    /// Bytes between consecutive pixels' outputs.
    pub pixel_out: i32,
    /// The epilogue's operations, in order.
    pub ops: Vec<EpiOp>,
    /// Bytes between the epilogue's tables.
    pub table_stride: i32,
    /// Valid channels of a group's last block (16 = all).
    pub last_valid: usize,
    /// Write packed sign bits (bit 1 = −1: negative or NaN) instead of f32
    /// values: `pixel_out` is then the bytes of a pixel's words, and the
    /// layer has one group.
    pub bits: bool,
}

impl Spec {
    /// The m-tiles in order: `(blocks per tile, count)`; see
    /// [`super::m_tiles`].
    pub fn m_tiles(&self) -> Vec<(usize, usize)> {
        super::m_tiles(self.blocks, self.tile.mr, self.last_valid < 16)
    }
}

/// `vcmpps` predicate `NGE_UQ`: not greater-or-equal, true for NaN.
const CMP_NGE_UQ: i32 = 0x19;

fn asm_err(e: IcedError) -> CodegenError {
    CodegenError::Internal(format!("assembling the avx512 FMA kernel: {e}"))
}

/// Assembles the kernel; returns its bytes.
pub fn assemble(spec: &Spec) -> Result<Vec<u8>, CodegenError> {
    if !spec.tile.fits() || spec.steps == 0 || spec.blocks == 0 || spec.last_valid == 0 {
        return Err(CodegenError::Internal(format!(
            "avx512 FMA kernel: unsupported shape {spec:?}"
        )));
    }
    let table_bytes = i32::try_from(4 * spec.steps)
        .map_err(|_| CodegenError::Internal("avx512 FMA kernel: too many steps".into()))?;
    let mut a = CodeAssembler::new(64).map_err(asm_err)?;
    emit(&mut a, spec, table_bytes).map_err(asm_err)?;
    a.assemble(0).map_err(asm_err)
}

fn emit(a: &mut CodeAssembler, spec: &Spec, table_bytes: i32) -> Result<(), IcedError> {
    // One m-tile; r11 counts its repeats.
    super::m_tile_loops(a, &spec.m_tiles(), r11, |a, tmr, last| {
        m_tile(a, spec, tmr, table_bytes, last && spec.last_valid < 16)
    })?;
    if spec.bits {
        // rcx is past the last block's 16 bits: zero the rest of each
        // pixel's last word (the layout's tail bits are zero).
        let written = 2 * spec.blocks as i32;
        for n in 0..spec.tile.nr as i32 {
            for off in (written..spec.pixel_out).step_by(2) {
                a.mov(word_ptr(rcx + (n * spec.pixel_out + off - written)), 0)?;
            }
        }
    }
    a.vzeroupper()?;
    a.ret()?;
    Ok(())
}

/// One m-tile: zero the accumulators, run the K loop, add the bias, store,
/// and advance `rcx` and `r8` to the next tile; `rsi` ends at the next
/// tile's weights by construction of the layout.
fn m_tile(
    a: &mut CodeAssembler,
    spec: &Spec,
    mr: usize,
    table_bytes: i32,
    masked: bool,
) -> Result<(), IcedError> {
    let nr = spec.tile.nr;
    let acc = |m: usize, n: usize| zmm(m * nr + n);
    let w = |m: usize| zmm(mr * nr + m);
    // Two broadcast registers, alternating, so a pixel's broadcast need not
    // wait for the previous pixel's FMAs to read theirs.
    let bcast = |n: usize| zmm(mr * nr + mr + n % 2);
    for m in 0..mr {
        for n in 0..nr {
            a.vxorps(acc(m, n), acc(m, n), acc(m, n))?;
        }
    }
    // r10 runs from −4·steps to 0 over the offset table at rdx.
    a.mov(r10, -i64::from(table_bytes))?;
    let mut k_loop = a.create_label();
    a.set_label(&mut k_loop)?;
    a.movsxd(rax, dword_ptr(rdx + r10 + table_bytes))?;
    for m in 0..mr {
        a.vmovups(w(m), zmmword_ptr(rsi + 64 * m as i32))?;
    }
    for n in 0..nr {
        a.vbroadcastss(bcast(n), dword_ptr(rdi + rax + n as i32 * spec.pixel_in))?;
        for m in 0..mr {
            a.vfmadd231ps(acc(m, n), w(m), bcast(n))?;
        }
    }
    a.add(rsi, 64 * mr as i32)?;
    a.add(r10, 4)?;
    a.jnz(k_loop)?;
    if masked {
        a.mov(eax, (1u32 << spec.last_valid) - 1)?;
        a.kmovw(k1, eax)?;
    }
    // The weight registers are free now: a zero for `prelu` and the sign.
    let zero = w(0);
    if spec.bits || spec.ops.iter().any(|o| matches!(o, EpiOp::PRelu(_))) {
        a.vxorps(zero, zero, zero)?;
    }
    for m in 0..mr {
        for n in 0..nr {
            let y = acc(m, n);
            for op in &spec.ops {
                let at =
                    |t: u8| zmmword_ptr(r8 + (i32::from(t) * spec.table_stride + 64 * m as i32));
                match *op {
                    EpiOp::Add(t) => a.vaddps(y, y, at(t))?,
                    EpiOp::Sub(t) => a.vsubps(y, y, at(t))?,
                    EpiOp::Mul(t) => a.vmulps(y, y, at(t))?,
                    EpiOp::Div(t) => a.vdivps(y, y, at(t))?,
                    EpiOp::PRelu(t) => {
                        // k2: lanes where !(y >= 0) (negative or NaN).
                        a.vcmpps(k2, y, zero, CMP_NGE_UQ)?;
                        a.vmulps(y.k2(), y, at(t))?;
                    }
                }
            }
            if spec.bits {
                // Bit 1 where !(y >= 0), only for the valid channels.
                a.vcmpps(k2, y, zero, CMP_NGE_UQ)?;
                if masked && m + 1 == mr {
                    a.kandw(k2, k2, k1)?;
                }
                a.kmovw(
                    word_ptr(rcx + (n as i32 * spec.pixel_out + 2 * m as i32)),
                    k2,
                )?;
                continue;
            }
            let dst = zmmword_ptr(rcx + (n as i32 * spec.pixel_out + 64 * m as i32));
            if masked && m + 1 == mr {
                a.vmovups(dst.k1(), acc(m, n))?;
            } else {
                a.vmovups(dst, acc(m, n))?;
            }
        }
    }
    a.add(rcx, if spec.bits { 2 } else { 64 } * mr as i32)?;
    a.add(r8, 64 * mr as i32)?;
    Ok(())
}

/// Lays out the weights `w` (`[O][K]`, `K` in the order of the step table)
/// per tile: `[group][m-tile][step][block in tile][16 lanes]`, zero past a
/// group's `og` channels.
pub fn tile_weights(w: &[f32], groups: usize, og: usize, spec: &Spec) -> Vec<f32> {
    let (nb, steps) = (spec.blocks, spec.steps);
    let mut out = Vec::with_capacity(groups * nb * steps * 16);
    for g in 0..groups {
        let mut b0 = 0;
        for (tmr, count) in spec.m_tiles() {
            for _ in 0..count {
                for k in 0..steps {
                    for m in 0..tmr {
                        for lane in 0..16 {
                            let ol = (b0 + m) * 16 + lane;
                            out.push(if ol < og {
                                w[(g * og + ol) * steps + k]
                            } else {
                                0.0
                            });
                        }
                    }
                }
                b0 += tmr;
            }
        }
    }
    out
}
