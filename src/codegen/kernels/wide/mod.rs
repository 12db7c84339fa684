//! Machine-code micro-kernels for the binary layers (the `avx512` kernel
//! path, and the 256-bit [`bconv_avx2`] of the `avx2` path) and the
//! real-valued ones ([`fconv`], `avx512`), assembled with iced-x86 and
//! defined in the same Cranelift module as the step functions that call
//! them.
//!
//! Cranelift's x64 back end has 128-bit vectors only, so its binary kernels
//! (`kernels::binary`) reach a fraction of what the popcount units give. For
//! the hot loop we emit x86-64 machine code ourselves and hand the bytes to
//! `Module::define_function_bytes`: the JIT and the object file then carry
//! the kernels like any other function (a direct `call rel32`, an
//! `R_X86_64_PLT32` relocation in an object), and the object needs no
//! runtime library. Everything else (tile loops, padding corrections, the
//! f32 epilogues, every fallback) stays in Cranelift.
//!
//! # Rules every kernel here follows
//! * A leaf in the System V calling convention: pointer arguments in `rdi,
//!   rsi, rdx, rcx, r8`, no return value, no stack frame beyond pushing the
//!   callee-saved registers it uses, no relocations (addresses arrive as
//!   arguments), position independent; `vzeroupper` before `ret`.
//! * Raw bytes bypass Cranelift's verifier, so every kernel is tested
//!   against the interpreter (the JIT tests run once per kernel path) and
//!   its disassembly is checked (`tests/jit_asm.rs`, iced's decoder).
//!
//! # The binary convolution micro-kernel ([`bconv`])
//! `a·w = K − 2·popcount(a XOR w)` for ±1 vectors stored as bits (bit 1 =
//! −1). One call computes one register tile: `nr` output pixels × all the
//! 16-channel blocks of one group, `mr` blocks at a time.
//!
//! * **Register block** `mr × nr` (e.g. 4 × 6): `mr` zmm vectors of 16
//!   output channels (one 32-bit lane per channel) by `nr` pixels gives
//!   `mr·nr` accumulators; `mr` weight registers, two broadcast registers
//!   and temporaries fill the 32 zmm registers (`mr·nr + mr + 3 ≤ 32`).
//! * **K loop** over the receptive field, one *step* (32 input channels of
//!   one tap) per iteration: `mr` weight loads, then per pixel one
//!   `vpbroadcastd` of the pixel's 32-bit input chunk and per weight vector
//!   `vpxord` + `vpopcntd` + `vpaddd`: 3 vector-ALU µops per 512 binary
//!   MACs, the limit of the 4 vector pipes (see
//!   `shared/research/performance-limit.md`). The input is read straight
//!   from the packed, pre-padded activation (no im2col): the step's byte
//!   offset comes from a table of `i32`, indexed by a negative counter that
//!   ends the loop at zero (`add rdi, 4; jnz`).
//! * **Weights** are laid out per tile at compile time, `[group][m-tile]
//!   [step][mr lines of 16 × u32]`, so the loop walks them with one pointer
//!   and 64-byte aligned loads.
//! * **Epilogue**, fused when the layer writes bits without padding
//!   corrections: `(count ^ s_o) > e_o` per channel (`vpxord` +
//!   `vpcmpgtd` into a mask register, the popcount form of the integer
//!   threshold, see `kernels::binary::count_thresholds`) and `kmovw` of the
//!   16 bits straight into the packed output. Otherwise the kernel stores
//!   its `i32` popcounts and the Cranelift epilogue of `kernels::binary`
//!   finishes (f32 outputs, batchnorm, zero-padding corrections, bits that
//!   straddle words).
//!
//! # Peaks ([`peak`])
//! Two loops of the same instructions without loads measure what one core
//! retires, f32 FMAs and binary XOR-popcount MACs per second, for `onebit
//! bench`'s fractions of peak.
//!
//! # Standalone use ([`standalone`])
//! [`standalone::XorPopcount`] assembles the same micro-kernel for a given
//! number of 64-bit words per row into its own executable memory and
//! computes `popcount(a_i XOR w_j)` (or `K − 2·popcount`) for packed rows
//! with runtime pointers, for callers outside compiled models (the training
//! engine).

pub mod bconv;
pub mod bconv_avx2;
pub mod call;
pub mod fconv;
pub mod fstep;
pub mod peak;
pub mod standalone;

use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module};
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

use crate::codegen::{CodegenError, target};

/// Puts machine-code functions into executable memory of their own (a
/// `JITModule` for the host, which the caller keeps alive while it calls
/// them): each `(code, params)` is a leaf taking `params` 64-bit integer
/// arguments. Returns the module and the functions' addresses, in order.
pub(crate) fn executable(
    name: &str,
    functions: &[(&[u8], usize)],
) -> Result<(JITModule, Vec<*const u8>), CodegenError> {
    let isa = target::host_isa(false)?;
    let mut module = JITModule::new(JITBuilder::with_isa(
        isa,
        cranelift_module::default_libcall_names(),
    ));
    let mut ids = Vec::with_capacity(functions.len());
    for (i, &(code, params)) in functions.iter().enumerate() {
        let mut sig = module.make_signature();
        for _ in 0..params {
            sig.params.push(cranelift_codegen::ir::AbiParam::new(
                cranelift_codegen::ir::types::I64,
            ));
        }
        let id = module.declare_function(&format!("{name}_{i}"), Linkage::Local, &sig)?;
        module.define_function_bytes(id, 64, code, &[])?;
        ids.push(id);
    }
    module.finalize_definitions()?;
    let ptrs = ids
        .into_iter()
        .map(|id| module.get_finalized_function(id))
        .collect();
    Ok((module, ptrs))
}

/// Emits the m-tiles of a kernel in order: each `(blocks, count)` of
/// `tiles` (see [`m_tiles`]) once, as a runtime loop counted down in
/// `counter` when `count > 1`; `body(a, blocks, last)` emits one tile.
pub(crate) fn m_tile_loops(
    a: &mut iced_x86::code_asm::CodeAssembler,
    tiles: &[(usize, usize)],
    counter: iced_x86::code_asm::AsmRegister64,
    mut body: impl FnMut(
        &mut iced_x86::code_asm::CodeAssembler,
        usize,
        bool,
    ) -> Result<(), iced_x86::IcedError>,
) -> Result<(), iced_x86::IcedError> {
    for (i, &(blocks, count)) in tiles.iter().enumerate() {
        let mut m_loop = a.create_label();
        if count > 1 {
            a.mov(counter, count as u64)?;
        }
        a.set_label(&mut m_loop)?;
        body(a, blocks, i + 1 == tiles.len())?;
        if count > 1 {
            a.dec(counter)?;
            a.jnz(m_loop)?;
        }
    }
    Ok(())
}

/// zmm register `i`. Callers keep `i` below 32 (their tiles' `fits`
/// checks); a larger index would give zmm31 rather than a panic.
pub(crate) fn zmm(i: usize) -> iced_x86::code_asm::AsmRegisterZmm {
    iced_x86::code_asm::registers::zmm::get_zmm(iced_x86::Register::ZMM0 + i as u32)
        .unwrap_or(iced_x86::code_asm::registers::zmm::zmm31)
}

/// The m-tiles of `blocks` 16-channel blocks in tiles of `mr`, in order:
/// `(blocks per tile, count)`. With `masked_last` (the group's last block
/// stores through a mask), the tile holding that block gets code of its own
/// (count 1).
pub(crate) fn m_tiles(blocks: usize, mr: usize, masked_last: bool) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    if blocks / mr > 0 {
        v.push((mr, blocks / mr));
    }
    if !blocks.is_multiple_of(mr) {
        v.push((blocks % mr, 1));
    }
    if masked_last
        && let Some(&(tmr, count)) = v.last()
        && count > 1
    {
        v.pop();
        v.push((tmr, count - 1));
        v.push((tmr, 1));
    }
    v
}

/// Work units a step should offer at least, so that up to 8 threads share
/// it evenly: a layer whose pixels give fewer (the last stage's 7 × 7, a
/// dense layer's single pixel) splits its output channels too.
const MIN_UNITS: usize = 16;

/// How a step with `units` pixel units splits the `blocks` 16-channel
/// blocks of its one group between work units: `(parts, blocks per
/// part)`, the blocks per part a multiple of `mr` so every part but the
/// last is whole m-tiles of the same kernel (the last part may hold
/// fewer). With `uniform`, only splits whose parts are all equal (one
/// kernel for every part), else none. A unit then computes one part of one
/// pixel unit: the same arithmetic per channel, so the split is exact, at
/// the cost of each part reading the unit's input again.
pub(crate) fn channel_parts(
    units: usize,
    blocks: usize,
    mr: usize,
    uniform: bool,
) -> (usize, usize) {
    if units == 0 || units >= MIN_UNITS || mr == 0 || blocks < 2 * mr {
        return (1, blocks);
    }
    let want = MIN_UNITS.div_ceil(units);
    if uniform {
        return (1..=want.min(blocks / mr))
            .rev()
            .find(|&p| blocks.is_multiple_of(p * mr))
            .map_or((1, blocks), |p| (p, blocks / p));
    }
    let per = blocks.div_ceil(want).div_ceil(mr) * mr;
    (blocks.div_ceil(per), per)
}

/// The instruction set a binary micro-kernel is assembled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// 32 zmm registers, `vpopcntd` ([`bconv`]).
    Avx512,
    /// 16 ymm registers, the `vpshufb` nibble look-up ([`bconv_avx2`]).
    Avx2,
}

/// A register tile: `mr` blocks of 16 output channels × `nr` pixels, for
/// one instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// The instruction set.
    pub isa: Isa,
    /// 16-channel blocks per tile.
    pub mr: usize,
    /// Pixels per tile.
    pub nr: usize,
}

impl Tile {
    /// The tile for a layer with `blocks` 16-channel blocks (per group) and
    /// `pixels` output pixels.
    ///
    /// AVX-512: 4 × 6 was the best of nine tiles for S1 in the yardstick's
    /// tuning (4 × 4 … 4 × 6 within 2% on every shape) and fills the
    /// register file: 24 accumulators + 4 weights + 2 broadcasts + 2
    /// temporaries. Layers with fewer blocks take more pixels (up to 8, the
    /// general-purpose registers holding the pixel bases); a single pixel
    /// (dense layers at batch 1) takes up to 8 blocks, so each broadcast
    /// feeds 8 vectors.
    ///
    /// AVX2: a block is two ymm halves, so `2·mr·nr` byte accumulators and
    /// five fixed registers share 16 (see [`bconv_avx2`]): one block × 5
    /// pixels, or up to 5 blocks of a single pixel. The weights are memory
    /// operands there, so the block count buys no reuse and more pixels
    /// share each weight load.
    pub fn choose(isa: Isa, blocks: usize, pixels: usize) -> Tile {
        let (mr, nr) = match isa {
            Isa::Avx512 if pixels <= 1 => (blocks.clamp(1, 8), 1),
            Isa::Avx512 => {
                let mr = blocks.clamp(1, 4);
                (mr, if mr == 4 { 6 } else { 8 }.min(pixels))
            }
            Isa::Avx2 if pixels <= 1 => (blocks.clamp(1, bconv_avx2::MAX_ACCUMULATORS / 2), 1),
            Isa::Avx2 => (1, bconv_avx2::MAX_PIXELS.min(pixels)),
        };
        Tile { isa, mr, nr }
    }

    /// Whether the tile fits the registers (see the kernels' docs).
    pub fn fits(self) -> bool {
        let (mr, nr) = (self.mr, self.nr);
        mr >= 1
            && nr >= 1
            && match self.isa {
                Isa::Avx512 => nr <= bconv::MAX_PIXELS && mr * nr + mr + 3 <= 32,
                Isa::Avx2 => {
                    nr <= bconv_avx2::MAX_PIXELS && 2 * mr * nr <= bconv_avx2::MAX_ACCUMULATORS
                }
            }
    }
}

/// Intel-syntax disassembly of machine code (for `Options::disasm` and the
/// disassembly tests); decodes on any host.
pub fn disassemble(bytes: &[u8]) -> String {
    let mut decoder = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    let mut out = String::new();
    let mut line = String::new();
    for ins in &mut decoder {
        line.clear();
        formatter.format(&ins, &mut line);
        out.push_str(&format!("  {:04x}  {line}\n", ins.ip()));
    }
    out
}
