//! The Cranelift side of the binary micro-kernel: a step function of
//! `kernels::binary` on the `avx512` path keeps its tile loop, pixel table,
//! padding corrections and f32 epilogues, and calls the machine-code kernel
//! once per (pixel tile, group) instead of emitting its own 128-bit K loop.

use cranelift_codegen::ir::{
    FuncRef, InstBuilder, MemFlagsData, StackSlot, StackSlotData, StackSlotKind, Value, types,
};

use super::Tile;
use super::bconv::{self, Out, Spec};
use crate::codegen::CodegenError;
use crate::codegen::emit::Fx;

/// The kernel of one layer and the data it reads.
pub struct WideConv {
    kernel: FuncRef,
    spec: Spec,
    /// Tile-laid weights.
    weights: Value,
    /// Bytes of one group's weights.
    group_bytes: i64,
    /// Step offsets (`i32`).
    offs: Value,
    /// The fused epilogue's tables (`s | e` thresholds, or f32 tables).
    tables: Option<Value>,
    /// The fused epilogue writes bits (else f32 values).
    bits_out: bool,
    bases: StackSlot,
    counts: Option<StackSlot>,
}

/// What the kernel writes.
pub enum Epi {
    /// Popcounts, for the Cranelift epilogue.
    Counts,
    /// Bits: 1 iff `(count ^ s_o) > e_o`, tables padded to the layer's
    /// padded channel count.
    Bits {
        /// `s` per channel.
        s: Vec<i32>,
        /// `e` per channel.
        e: Vec<i32>,
    },
    /// f32 values `ops(f32(k − 2·count))`.
    Floats {
        /// The receptive field in bits.
        k: i32,
        /// The operations, in the interpreter's order.
        ops: Vec<bconv::FOp>,
        /// Their tables, each padded to the layer's padded channel count.
        tables: Vec<Vec<f32>>,
        /// Valid channels of a group's last block (16 = all).
        last_valid: usize,
    },
}

/// What the caller does with a 16-channel block's popcounts on the counts
/// path: `(fx, counts[pixel][4 × i32x4], block index, valid channels)`.
pub type BlockEpilogue<'e> =
    dyn FnMut(&mut Fx, &[[Value; 4]], Value, usize) -> Result<(), CodegenError> + 'e;

impl WideConv {
    /// Assembles the kernel of a layer and declares its data.
    ///
    /// `lines` are the weights in the vector layout of `kernels::binary`,
    /// `offs` the steps' input offsets, and `epi` what the kernel writes
    /// (`pixel_bytes` apart for bits and f32 values).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fx: &mut Fx,
        tile: Tile,
        groups: usize,
        blocks: usize,
        lines: &[u8],
        offs: &[i64],
        epi: Epi,
        pixel_bytes: i64,
    ) -> Result<WideConv, CodegenError> {
        let steps = offs.len();
        let pixel_stride = i32::try_from(pixel_bytes)
            .map_err(|_| CodegenError::Internal("pixel too large".into()))?;
        let (out, tables) = match epi {
            Epi::Bits { s, e } => {
                let both: Vec<i32> = s.iter().chain(&e).copied().collect();
                let out = Out::Bits {
                    pixel_stride,
                    e_offset: 4 * s.len() as i32,
                };
                (out, Some(fx.i32_data(&both)?))
            }
            Epi::Floats {
                k,
                ops,
                tables,
                last_valid,
            } => {
                let len = tables.first().map_or(0, |t| t.len());
                let all: Vec<f32> = tables.iter().flat_map(|t| t.iter().copied()).collect();
                let out = Out::Floats {
                    pixel_stride,
                    k,
                    ops,
                    table_stride: 4 * len as i32,
                    last_valid,
                };
                let data = if all.is_empty() {
                    fx.ic(0)
                } else {
                    fx.f32_data(&all)?
                };
                (out, Some(data))
            }
            Epi::Counts => (
                Out::Counts {
                    pixel_stride: 64 * blocks as i32,
                },
                None,
            ),
        };
        let counts_out = matches!(out, Out::Counts { .. });
        let bits_out = matches!(out, Out::Bits { .. });
        let spec = Spec {
            tile,
            blocks,
            steps,
            out,
        };
        let code = bconv::assemble(&spec)?;
        let listing = format!("{spec:?}\n{}", super::disassemble(&code));
        let kernel = fx.code(&code, 5, listing)?;
        let weights = fx.data(bconv::tile_weights(lines, groups, &spec))?;
        let tab: Vec<i32> = offs.iter().map(|&o| o as i32).collect();
        let offs = fx.i32_data(&tab)?;
        let bases = fx.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (8 * tile.nr) as u32,
            3,
        ));
        let counts = counts_out.then(|| {
            fx.b.create_sized_stack_slot(StackSlotData::new(
                StackSlotKind::ExplicitSlot,
                (64 * blocks * tile.nr) as u32,
                6,
            ))
        });
        Ok(WideConv {
            kernel,
            spec,
            weights,
            group_bytes: (blocks * steps * 64) as i64,
            offs,
            tables,
            bits_out,
            bases,
            counts,
        })
    }

    /// One group of one pixel tile: `bases` are the pixels' input addresses
    /// (group offset added), `out` the first pixel's output address and
    /// `o_g` the group's first channel. On the counts path, `epilogue` runs
    /// for every 16-channel block (`og` channels in the group).
    pub fn group(
        &self,
        fx: &mut Fx,
        bases: &[Value],
        g: Value,
        out: Value,
        o_g: Value,
        og: usize,
        epilogue: &mut BlockEpilogue,
    ) -> Result<(), CodegenError> {
        for (k, &x) in bases.iter().enumerate() {
            fx.b.ins()
                .stack_store(types::I64, x, self.bases, (8 * k) as i32);
        }
        let table = fx.b.ins().stack_addr(types::I64, self.bases, 0);
        let wg = fx.mul_imm(g, self.group_bytes);
        let w = fx.b.ins().iadd(self.weights, wg);
        let (dst, epi) = match (self.tables, self.counts) {
            (Some(th), _) => {
                // Bits: 16-bit words at channel o_g (a multiple of 16 here);
                // f32: 4 bytes per channel.
                let byte = if self.bits_out {
                    fx.b.ins().ushr_imm_s(o_g, 3)
                } else {
                    fx.mul_imm(o_g, 4)
                };
                let dst = fx.b.ins().iadd(out, byte);
                let o4 = fx.mul_imm(o_g, 4);
                (dst, fx.b.ins().iadd(th, o4))
            }
            (None, Some(slot)) => (fx.b.ins().stack_addr(types::I64, slot, 0), fx.ic(0)),
            (None, None) => {
                return Err(CodegenError::Internal("wide kernel without outputs".into()));
            }
        };
        fx.b.ins()
            .call(self.kernel, &[table, w, self.offs, dst, epi]);
        let Some(slot) = self.counts else {
            return Ok(());
        };
        let nr = self.spec.tile.nr;
        let stride = 64 * self.spec.blocks as i64;
        let counts_of = |fx: &mut Fx, blk: Value| -> Vec<[Value; 4]> {
            let base = fx.b.ins().stack_addr(types::I64, slot, 0);
            let off = fx.mul_imm(blk, 64);
            let base = fx.b.ins().iadd(base, off);
            (0..nr)
                .map(|k| {
                    [0, 1, 2, 3].map(|r| {
                        fx.b.ins().load(
                            types::I32X4,
                            MemFlagsData::trusted(),
                            base,
                            (k as i64 * stride + 16 * r) as i32,
                        )
                    })
                })
                .collect()
        };
        let full = og / 16;
        fx.for_n(full, |fx, blk| {
            let counts = counts_of(fx, blk);
            epilogue(fx, &counts, blk, 16)
        })?;
        if !og.is_multiple_of(16) {
            let last = fx.ic(full as i64);
            let counts = counts_of(fx, last);
            epilogue(fx, &counts, last, og % 16)?;
        }
        Ok(())
    }
}
