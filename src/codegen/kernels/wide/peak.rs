//! The machine's arithmetic peaks, measured: how many f32 multiply-adds and
//! how many binary multiply-adds (±1 products summed by XOR-popcount) one
//! core retires per second when nothing but the arithmetic runs. `onebit
//! bench` divides each layer's rate by them, so a user sees how far a layer
//! is from what the hardware allows, on the machine it runs on (clock,
//! vector units and throttling included) rather than from a datasheet.
//!
//! # The two loops
//! Both are assembled with iced-x86 like the micro-kernels, run from their
//! own executable memory, take the iteration count in `rdi` and count it
//! down (`dec rdi; jnz`), and touch no memory.
//!
//! * **f32**: one `vfmadd231ps zmm` into each of 12 independent
//!   accumulators per iteration, 12·16 = 192 MACs. An FMA has a latency of
//!   4 cycles on current x86 cores and up to 2 issue ports, so at least 8
//!   independent chains are needed to keep every port busy; 12 leaves a
//!   margin and matches the accumulator count of a BLIS-style register
//!   block.
//! * **binary**: per chain `vpxord` + `vpopcntd` + `vpaddd`, the inner step
//!   of the binary micro-kernel ([`super::bconv`]) without its loads, on 8
//!   independent chains: 8·512 = 4,096 binary MACs per iteration (16 lanes
//!   × 32 bits). It is the ceiling of that kernel's instruction mix.
//!
//! Accumulators start at zero and stay finite (no denormals): `0·0 + 0`.
//!
//! # Timing
//! Each loop is calibrated to ~0.5 ms per run and run 40 times; the fastest
//! run counts, because other work on a shared machine only ever slows a run
//! down (and a run this short often gets a scheduler slice to itself).
//! Measuring takes ~50 ms and is done once per process. On a machine whose
//! cores are busy with other work the peaks can still come out low, and
//! fractions above 100% say so.

use std::sync::OnceLock;
use std::time::Instant;

use iced_x86::IcedError;
use iced_x86::code_asm::{
    CodeAssembler,
    registers::gpr64::rdi,
    registers::zmm::{zmm30, zmm31},
};

use super::{executable, zmm};
use crate::codegen::{CodegenError, target};

/// Peak rates of one core, in multiply-adds per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peaks {
    /// f32 multiply-adds (`vfmadd231ps zmm`).
    pub f32_macs: f64,
    /// Binary multiply-adds (`vpxord` + `vpopcntd` + `vpaddd` on zmm).
    pub binary_macs: f64,
}

type LoopFn = unsafe extern "sysv64" fn(u64);

const FMA_CHAINS: usize = 12;
const FMA_MACS_PER_ITER: f64 = (FMA_CHAINS * 16) as f64;
const POPCNT_CHAINS: usize = 8;
const POPCNT_MACS_PER_ITER: f64 = (POPCNT_CHAINS * 512) as f64;

fn asm_err(e: IcedError) -> CodegenError {
    CodegenError::Internal(format!("peak loop: {e}"))
}

/// Assembles a loop: zero the registers `0..zeroed`, then run `body` `rdi`
/// times.
fn assemble(
    zeroed: usize,
    body: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Vec<u8>, CodegenError> {
    let mut a = CodeAssembler::new(64).map_err(asm_err)?;
    let emit = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        for i in 0..zeroed {
            a.vpxord(zmm(i), zmm(i), zmm(i))?;
        }
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        body(a)?;
        a.dec(rdi)?;
        a.jnz(top)?;
        a.vzeroupper()?;
        a.ret()
    };
    emit(&mut a).map_err(asm_err)?;
    a.assemble(0).map_err(asm_err)
}

fn fma_loop() -> Result<Vec<u8>, CodegenError> {
    // Accumulators 0..12, multiplicands 12 and 13.
    assemble(FMA_CHAINS + 2, |a| {
        for i in 0..FMA_CHAINS {
            a.vfmadd231ps(zmm(i), zmm(FMA_CHAINS), zmm(FMA_CHAINS + 1))?;
        }
        Ok(())
    })
}

fn popcount_loop() -> Result<Vec<u8>, CodegenError> {
    // Accumulators 0..8, temporaries 8..16, operands 30 and 31.
    assemble(32, |a| {
        for i in 0..POPCNT_CHAINS {
            let t = zmm(POPCNT_CHAINS + i);
            a.vpxord(t, zmm30, zmm31)?;
            a.vpopcntd(t, t)?;
            a.vpaddd(zmm(i), zmm(i), t)?;
        }
        Ok(())
    })
}

/// Iterations per second of `f`, the best of 40 runs of ~0.5 ms (short
/// enough that some run gets a whole scheduler slice on a loaded machine).
fn rate(f: LoopFn) -> f64 {
    let run = |iters: u64| {
        let t0 = Instant::now();
        // SAFETY: `f` is a leaf loop that reads only `rdi` and registers it
        // zeroes itself; it returns after `iters` iterations.
        unsafe { f(iters) };
        t0.elapsed().as_secs_f64()
    };
    let mut iters = 1u64 << 12;
    while run(iters) < 2e-4 && iters < 1 << 40 {
        iters *= 4;
    }
    let per = run(iters) / iters as f64;
    let iters = ((5e-4 / per.max(1e-12)) as u64).max(1);
    let best = (0..40).map(|_| run(iters)).fold(f64::INFINITY, f64::min);
    iters as f64 / best
}

fn measure_now() -> Result<Peaks, CodegenError> {
    let fma = fma_loop()?;
    let popcount = popcount_loop()?;
    let (_keep, ptrs) = executable("peak", &[(&fma, 1), (&popcount, 1)])?;
    // SAFETY: each pointer is the finalized code of the loop assembled above,
    // `extern "sysv64" fn(u64)`; `_keep` owns the memory until we return.
    let (fma_fn, popcount_fn) = unsafe {
        (
            std::mem::transmute::<*const u8, LoopFn>(ptrs[0]),
            std::mem::transmute::<*const u8, LoopFn>(ptrs[1]),
        )
    };
    Ok(Peaks {
        f32_macs: rate(fma_fn) * FMA_MACS_PER_ITER,
        binary_macs: rate(popcount_fn) * POPCNT_MACS_PER_ITER,
    })
}

/// The peaks of one core of this machine, measured once per process; `None`
/// where the CPU lacks the AVX-512 features the loops use (the `avx512`
/// kernel path's: AVX512F/BW/VL/VPOPCNTDQ).
pub fn measure() -> Option<Peaks> {
    static PEAKS: OnceLock<Option<Peaks>> = OnceLock::new();
    *PEAKS.get_or_init(|| {
        if !target::HostFeatures::detect().avx512_bnn {
            return None;
        }
        measure_now().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::kernels::wide::disassemble;

    #[test]
    fn the_loops_are_the_instructions_they_measure() {
        let fma = disassemble(&fma_loop().unwrap());
        assert_eq!(fma.matches("vfmadd231ps zmm").count(), FMA_CHAINS, "{fma}");
        let pop = disassemble(&popcount_loop().unwrap());
        for ins in ["vpxord zmm", "vpopcntd zmm", "vpaddd zmm"] {
            // The xors also zero the registers before the loop.
            assert!(pop.matches(ins).count() >= POPCNT_CHAINS, "{ins}: {pop}");
        }
        assert!(fma.contains("jne") && pop.contains("jne"));
    }

    #[test]
    fn peaks_are_measured_where_the_cpu_has_the_features() {
        match measure() {
            Some(p) => {
                assert!(p.f32_macs.is_finite() && p.f32_macs > 0.0, "{p:?}");
                // 512 binary MACs per three vector µops against 16 f32 MACs
                // per one: on any AVX-512 core the binary rate is far ahead.
                assert!(p.binary_macs > 4.0 * p.f32_macs, "{p:?}");
            }
            None => assert!(!target::HostFeatures::detect().avx512_bnn),
        }
    }
}
