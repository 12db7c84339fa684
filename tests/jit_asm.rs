//! Assembly checks, per kernel path.
//!
//! * `portable`: a binary layer's Cranelift kernel uses the hardware
//!   popcount (`vpopcntb` where the host has AVX-512 BITALG, else `popcnt`)
//!   and no software popcount sequence (no nibble-table `pshufb`, no
//!   shift-and-mask bit counting).
//! * `avx512`: the machine-code micro-kernel, decoded with iced-x86 (so the
//!   check runs on any host, whether or not it could execute the code), has
//!   the zmm xor / `vpopcntd` / `vpaddd` triple in its K loop, the fused
//!   threshold epilogue (`vpcmpgtd` into a mask register, `kmovw` to
//!   memory) or the f32 one (`vcvtdq2ps`, the epilogue's operations, no
//!   FMA, masked stores for a partial block), ends in `vzeroupper; ret`, and uses no stack beyond pushing
//!   callee-saved registers.
//! * `avx2`: the 256-bit micro-kernel is VEX code only (no zmm, no mask
//!   registers, no EVEX encoding), with the nibble look-up (`vpshufb` ×2,
//!   `vpaddb` ×2 per half-block and pixel) in its K loop, the byte counts
//!   flushed by `vpmaddubsw` + `vpmaddwd`, `vmovmskps` for bits, and a
//!   balanced stack frame.
//! * `avx512`, real-valued layers: the FMA micro-kernel has `vbroadcastss`
//!   and `vfmadd231ps zmm` in its K loop and no separate multiply, packs a
//!   fused sign with `vcmpps` + `kmovw`, and a compiled `conv2d` calls it
//!   (the portable path has no FMA at all).

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use onebit::codegen::kernels::wide::bconv::{self, FOp, Out, Spec};
use onebit::codegen::kernels::wide::{Isa, Tile};
use onebit::codegen::target::{HostFeatures, KernelPath, Kernels};
use onebit::ir::Params;
use onebit::{CompiledModel, Options, Popcount};

const SRC: &str = "model a { input x: f32[64, 6, 6]
  y = sign(batchnorm(bconv2d(sign(x), 64, kernel=3, pad=1, pad_value=1)))
  output y }";

fn kernel_disasm(popcount: Popcount, path: KernelPath) -> String {
    let graph = onebit::parse(SRC).unwrap();
    let params = Params::init(&graph, 1);
    let options = Options {
        popcount,
        disasm: true,
        kernels: Kernels::Force(path),
        ..Options::default()
    };
    let model = CompiledModel::compile(onebit::verify(&graph).unwrap(), &params, &options).unwrap();
    let i = model
        .layers()
        .iter()
        .position(|l| l.kind.starts_with("bconv"))
        .expect("a binary kernel");
    let text = model.disasm(i).expect("disassembly").to_string();
    if std::env::var("ONEBIT_SHOW_ASM").is_ok() {
        eprintln!("{text}");
    }
    text
}

#[test]
fn vector_path_uses_hardware_popcount() {
    let text = kernel_disasm(Popcount::Auto, KernelPath::Portable);
    let host = onebit::codegen::target::HostFeatures::detect();
    if host.vector_popcnt {
        assert!(text.contains("vpopcntb"), "no vpopcntb:\n{text}");
        assert!(
            !text.contains("pshufb"),
            "software (pshufb) popcount:\n{text}"
        );
    } else {
        assert!(text.contains("popcnt"), "no popcnt:\n{text}");
    }
    assert!(!text.contains("machine-code kernel"), "{text}");
}

#[test]
fn scalar_path_uses_popcnt() {
    let text = kernel_disasm(Popcount::Scalar, KernelPath::Portable);
    let host = onebit::codegen::target::HostFeatures::detect();
    if host.scalar_popcnt {
        assert!(text.contains("popcnt"), "no popcnt:\n{text}");
        // The SWAR fallback multiplies by 0x0101010101010101.
        assert!(
            !text.to_lowercase().contains("0x101010101010101"),
            "software popcount:\n{text}"
        );
    }
}

fn decode(bytes: &[u8]) -> Vec<Instruction> {
    Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE)
        .into_iter()
        .collect()
}

fn zmm_ops(ins: &Instruction) -> bool {
    (0..ins.op_count()).all(|i| {
        ins.op_kind(i) != OpKind::Register
            || ins.op_register(i).is_zmm()
            || ins.op_register(i).is_k()
    })
}

/// Decodes the kernel for a 4 × 6 tile and checks its instruction mix.
#[test]
fn avx512_kernel_instructions() {
    for out in [
        Out::Bits {
            pixel_stride: 8,
            e_offset: 320,
        },
        Out::Counts { pixel_stride: 256 },
        Out::Floats {
            pixel_stride: 256,
            k: 576,
            ops: vec![FOp::Mul(0), FOp::Add(1)],
            table_stride: 320,
            last_valid: 16,
        },
        Out::Floats {
            pixel_stride: 240,
            k: 576,
            ops: vec![FOp::Mul(0), FOp::Add(1)],
            table_stride: 320,
            last_valid: 12,
        },
    ] {
        let spec = Spec {
            tile: Tile {
                isa: Isa::Avx512,
                mr: 4,
                nr: 6,
            },
            blocks: 4,
            steps: 18,
            out: out.clone(),
        };
        let code = bconv::assemble(&spec).unwrap();
        let ins = decode(&code);
        assert!(ins.iter().all(|i| !i.is_invalid()), "undecodable bytes");
        let count = |m: Mnemonic| {
            ins.iter()
                .filter(|i| i.mnemonic() == m && zmm_ops(i))
                .count()
        };
        // The K loop: 24 triples and 6 broadcasts per step, on zmm.
        assert_eq!(count(Mnemonic::Vpopcntd), 24, "{out:?}");
        assert!(count(Mnemonic::Vpxord) >= 24, "{out:?}");
        // (The f32 epilogue doubles each count with one more `vpaddd`.)
        let doubling = if matches!(out, Out::Floats { .. }) {
            24
        } else {
            0
        };
        assert_eq!(count(Mnemonic::Vpaddd), 24 + doubling, "{out:?}");
        assert_eq!(count(Mnemonic::Vpbroadcastd), 6, "{out:?}");
        match out {
            Out::Bits { .. } => {
                assert_eq!(count(Mnemonic::Vpcmpgtd), 24, "{out:?}");
                assert_eq!(
                    ins.iter()
                        .filter(|i| i.mnemonic() == Mnemonic::Kmovw)
                        .count(),
                    24
                );
            }
            Out::Counts { .. } => assert_eq!(count(Mnemonic::Vmovdqu32), 24),
            Out::Floats { last_valid, .. } => {
                // The affine epilogue: convert, multiply, add, store; the
                // partial last block's stores masked with k2.
                assert_eq!(count(Mnemonic::Vcvtdq2ps), 24);
                assert_eq!(count(Mnemonic::Vmulps), 24);
                assert_eq!(count(Mnemonic::Vaddps), 24);
                assert!(ins.iter().all(|i| i.mnemonic() != Mnemonic::Vfmadd231ps));
                let masked = ins
                    .iter()
                    .filter(|i| i.mnemonic() == Mnemonic::Vmovups && i.op_mask() == Register::K2)
                    .count();
                assert_eq!(masked, if last_valid < 16 { 6 } else { 0 });
            }
        }
        let n = ins.len();
        assert_eq!(ins[n - 2].mnemonic(), Mnemonic::Vzeroupper);
        assert_eq!(ins[n - 1].mnemonic(), Mnemonic::Ret);
        // Stack use: pushes and pops of the same registers, nothing else.
        let pushes: Vec<Register> = ins
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Push)
            .map(|i| i.op0_register())
            .collect();
        let mut pops: Vec<Register> = ins
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Pop)
            .map(|i| i.op0_register())
            .collect();
        pops.reverse();
        assert_eq!(pushes, pops);
        assert!(!ins.iter().any(|i| {
            i.op0_register() == Register::RSP
                || (0..i.op_count())
                    .any(|k| i.op_kind(k) == OpKind::Memory && i.memory_base() == Register::RSP)
        }));
    }
}

/// A compiled model on the avx512 path calls the machine-code kernel (its
/// listing is part of the step's disassembly).
#[test]
fn avx512_path_calls_the_kernel() {
    if !KernelPath::supported().contains(&KernelPath::Avx512) {
        eprintln!("host without the avx512 path; skipping");
        return;
    }
    let text = kernel_disasm(Popcount::Auto, KernelPath::Avx512);
    assert!(text.contains("machine-code kernel"), "{text}");
    assert!(text.contains("vpopcntd zmm"), "{text}");
    assert!(text.contains("vpcmpgtd k1"), "{text}");
    assert!(
        !text.contains("vpopcntb"),
        "a 128-bit kernel on the avx512 path:\n{text}"
    );
}

/// Forcing a path the host cannot run is a clear error, not a SIGILL; an
/// unknown path name is an error naming the known ones.
#[test]
fn unsupported_path_is_an_error() {
    let without = HostFeatures {
        avx512_bnn: false,
        avx2_bnn: false,
        ..HostFeatures::detect()
    };
    let e = KernelPath::resolve(Kernels::Force(KernelPath::Avx512), &without)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`avx512` needs") && e.contains("VPOPCNTDQ") && e.contains("runs: portable"),
        "{e}"
    );
    assert_eq!(
        KernelPath::resolve(Kernels::Auto, &without).unwrap(),
        KernelPath::Portable
    );
    if !KernelPath::supported().contains(&KernelPath::Avx512) {
        let graph = onebit::parse(SRC).unwrap();
        let params = Params::init(&graph, 1);
        let options = Options {
            kernels: Kernels::Force(KernelPath::Avx512),
            ..Options::default()
        };
        let e = CompiledModel::compile(onebit::verify(&graph).unwrap(), &params, &options)
            .unwrap_err()
            .to_string();
        assert!(e.contains("avx512") && e.contains("lacks"), "{e}");
    }
    let e = "avx1024".parse::<Kernels>().unwrap_err().to_string();
    assert!(
        e.contains("avx1024") && e.contains("portable, avx2, avx512"),
        "{e}"
    );
    assert_eq!("auto".parse::<Kernels>().unwrap(), Kernels::Auto);
    assert_eq!(
        "portable".parse::<Kernels>().unwrap(),
        Kernels::Force(KernelPath::Portable)
    );
}

/// Decodes the FMA kernel of real-valued layers (tiles 4 × 6, 2 × 14,
/// 1 × 28, the stem's 147 steps) and checks its instruction mix: per step
/// `mr` weight loads, `nr` broadcasts and `mr·nr` `vfmadd231ps` on zmm; the bias as `vaddps`; a partial
/// last block stored through `k1`; no stack, `vzeroupper; ret`.
#[test]
fn avx512_fma_kernel_instructions() {
    use onebit::codegen::kernels::wide::fconv::{self, FTile};
    for (blocks, last_valid, bias, mr, nr) in [
        (4, 16, false, 4, 6),
        (5, 8, true, 4, 6),
        (4, 16, true, 2, 14),
        (3, 12, true, 2, 14),
        (1, 5, false, 1, 28),
        (2, 16, true, 2, 3),
        (4, 16, true, 4, 6),
    ] {
        // The last case: the stem's bias, batchnorm and prelu fused.
        let fused = (blocks, mr, nr, bias) == (4, 4, 6, true) && last_valid == 16;
        let spec = fconv::Spec {
            tile: FTile { mr, nr },
            blocks,
            steps: 147,
            pixel_in: 24,
            pixel_out: 256,
            ops: match (bias, fused) {
                (true, false) => vec![fconv::EpiOp::Add(0)],
                (true, true) => {
                    use fconv::EpiOp::*;
                    vec![Add(0), Sub(1), Mul(2), Div(3), Add(4), PRelu(5)]
                }
                _ => vec![],
            },
            table_stride: 320,
            last_valid,
            bits: false,
        };
        let code = fconv::assemble(&spec).unwrap();
        let ins = decode(&code);
        assert!(ins.iter().all(|i| !i.is_invalid()), "undecodable bytes");
        let count = |m: Mnemonic| {
            ins.iter()
                .filter(|i| i.mnemonic() == m && zmm_ops(i))
                .count()
        };
        // One copy of the K loop per m-tile kind ((mr, count) of m_tiles).
        let tiles = spec.m_tiles();
        let fmas: usize = tiles.iter().map(|&(mr, _)| mr * nr).sum();
        assert_eq!(count(Mnemonic::Vfmadd231ps), fmas, "{spec:?}");
        assert_eq!(count(Mnemonic::Vbroadcastss), nr * tiles.len(), "{spec:?}");
        let adds = spec
            .ops
            .iter()
            .filter(|o| matches!(o, fconv::EpiOp::Add(_)))
            .count();
        assert_eq!(count(Mnemonic::Vaddps), adds * fmas, "{spec:?}");
        if fused {
            // Batchnorm as sub, mul, div, add; prelu as a compare into k2
            // and a multiply merged under it.
            assert_eq!(count(Mnemonic::Vsubps), fmas);
            assert_eq!(count(Mnemonic::Vdivps), fmas);
            assert_eq!(count(Mnemonic::Vcmpps), fmas);
            let merged = ins
                .iter()
                .filter(|i| i.mnemonic() == Mnemonic::Vmulps && i.op_mask() == Register::K2)
                .count();
            assert_eq!(merged, fmas);
        }
        let masked = ins
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Vmovups && i.op_mask() == Register::K1)
            .count();
        assert_eq!(masked, if last_valid < 16 { nr } else { 0 }, "{spec:?}");
        // No separate multiply in the K loop: every product is fused into
        // its sum (the epilogue's multiplies are batchnorm's and prelu's).
        assert_eq!(count(Mnemonic::Vmulps), if fused { 2 * fmas } else { 0 });
        let n = ins.len();
        assert_eq!(ins[n - 2].mnemonic(), Mnemonic::Vzeroupper);
        assert_eq!(ins[n - 1].mnemonic(), Mnemonic::Ret);
        assert!(!ins.iter().any(|i| {
            matches!(i.mnemonic(), Mnemonic::Push | Mnemonic::Pop)
                || i.op0_register() == Register::RSP
                || (0..i.op_count())
                    .any(|k| i.op_kind(k) == OpKind::Memory && i.memory_base() == Register::RSP)
        }));
    }
}

/// The FMA kernel with a fused sign: per value a `vcmpps` into `k2` and a
/// `kmovw` of its 16 bits to memory (the partial last block's bits masked
/// with `k1` by a `kandw`), no f32 stores, and the rest of each pixel's last
/// word zeroed with 16-bit stores.
#[test]
fn avx512_fma_kernel_packs_signs() {
    use onebit::codegen::kernels::wide::fconv::{self, FTile};
    // 72 channels: 5 blocks (the last 8 valid) in two 64-bit words.
    let spec = fconv::Spec {
        tile: FTile { mr: 4, nr: 6 },
        blocks: 5,
        steps: 27,
        pixel_in: 12,
        pixel_out: 16,
        ops: vec![fconv::EpiOp::Sub(0), fconv::EpiOp::Mul(1)],
        table_stride: 352,
        last_valid: 8,
        bits: true,
    };
    let code = fconv::assemble(&spec).unwrap();
    let ins = decode(&code);
    assert!(ins.iter().all(|i| !i.is_invalid()), "undecodable bytes");
    let values: usize = spec.m_tiles().iter().map(|&(mr, _)| mr * 6).sum();
    let n = |m: Mnemonic| ins.iter().filter(|i| i.mnemonic() == m).count();
    assert_eq!(n(Mnemonic::Vcmpps), values);
    assert_eq!(n(Mnemonic::Kandw), 6);
    let kmov_to_memory = ins
        .iter()
        .filter(|i| i.mnemonic() == Mnemonic::Kmovw && i.op0_kind() == OpKind::Memory)
        .count();
    assert_eq!(kmov_to_memory, values);
    let f32_stores = ins
        .iter()
        .filter(|i| i.mnemonic() == Mnemonic::Vmovups && i.op0_kind() == OpKind::Memory)
        .count();
    assert_eq!(f32_stores, 0);
    // 5 blocks write 10 of each pixel's 16 bytes: 3 zeroing stores a pixel.
    let zeroing = ins
        .iter()
        .filter(|i| {
            i.mnemonic() == Mnemonic::Mov
                && i.op0_kind() == OpKind::Memory
                && i.memory_size() == iced_x86::MemorySize::UInt16
        })
        .count();
    assert_eq!(zeroing, 3 * 6);
}

/// A real convolution compiled on the avx512 path calls the FMA kernel
/// (`vfmadd231ps zmm` in its listing); on the portable path it has no FMA.
#[test]
fn real_layers_use_fma_on_avx512_only() {
    let src = "model s { input x: f32[3, 20, 20]
      y = conv2d(x, 64, kernel=7, stride=2, pad=3, bias=false)
      output y }";
    let graph = onebit::parse(src).unwrap();
    let params = Params::init(&graph, 1);
    for path in KernelPath::supported() {
        let options = Options {
            disasm: true,
            kernels: Kernels::Force(path),
            ..Options::default()
        };
        let model =
            CompiledModel::compile(onebit::verify(&graph).unwrap(), &params, &options).unwrap();
        let i = model
            .layers()
            .iter()
            .position(|l| l.kind == "conv")
            .expect("a conv step");
        let text = model.disasm(i).expect("disassembly").to_string();
        match path {
            KernelPath::Avx512 => {
                assert!(text.contains("machine-code kernel"), "{text}");
                assert!(text.contains("vfmadd231ps zmm"), "{text}");
            }
            KernelPath::Portable | KernelPath::Avx2 => {
                assert!(!text.contains("vfmadd"), "{text}")
            }
        }
    }
}

/// The AVX2 binary kernel decodes as VEX code only and has the nibble
/// look-up in its K loop: per step `nr` broadcasts and, per half-block and
/// pixel, `vpxor` with a weight in memory, two `vpshufb` and two `vpaddb`;
/// the flush widens every accumulator once; bits come from `vmovmskps`.
#[test]
fn avx2_kernel_instructions() {
    for (mr, nr, blocks) in [(1, 5, 4), (5, 1, 5), (2, 2, 3)] {
        for out in [
            Out::Bits {
                pixel_stride: 8,
                e_offset: 320,
            },
            Out::Counts { pixel_stride: 256 },
            Out::Floats {
                pixel_stride: 240,
                k: 576,
                ops: vec![FOp::Mul(0), FOp::Add(1)],
                table_stride: 320,
                last_valid: 12,
            },
        ] {
            let spec = Spec {
                tile: Tile {
                    isa: Isa::Avx2,
                    mr,
                    nr,
                },
                blocks,
                steps: 40,
                out: out.clone(),
            };
            let code = bconv::assemble(&spec).unwrap();
            let ins = decode(&code);
            let what = format!("{mr}×{nr}, {out:?}");
            assert!(ins.iter().all(|i| !i.is_invalid()), "undecodable: {what}");
            for i in &ins {
                // EVEX is the 0x62 escape (BOUND is invalid in 64-bit mode),
                // after at most an address-size prefix.
                let at = i.ip() as usize;
                let first = code[at..at + i.len()].iter().find(|&&b| b != 0x67);
                assert_ne!(first, Some(&0x62), "{i} is EVEX code ({what})");
                assert!(
                    (0..i.op_count()).all(|k| i.op_kind(k) != OpKind::Register
                        || !i.op_register(k).is_zmm() && !i.op_register(k).is_k()),
                    "{i} uses an AVX-512 register ({what})"
                );
            }
            let count = |m: Mnemonic| ins.iter().filter(|i| i.mnemonic() == m).count();
            // One m-tile body per distinct tile shape; each has its K loop.
            let tiles = spec.m_tiles().len();
            let per_tile = |mr: usize| 2 * mr * nr;
            let halves: usize = spec.m_tiles().iter().map(|&(m, _)| per_tile(m)).sum();
            assert_eq!(count(Mnemonic::Vpshufb), 2 * halves, "{what}");
            assert_eq!(count(Mnemonic::Vpmaddubsw), halves, "{what}");
            assert_eq!(count(Mnemonic::Vpmaddwd), halves, "{what}");
            let broadcasts = ins
                .iter()
                .filter(|i| {
                    i.mnemonic() == Mnemonic::Vpbroadcastd && i.op1_kind() == OpKind::Memory
                })
                .count();
            assert_eq!(broadcasts, tiles * nr, "{what}");
            if matches!(out, Out::Bits { .. }) {
                assert_eq!(count(Mnemonic::Vmovmskps), halves, "{what}");
            }
            let n = ins.len();
            assert_eq!(ins[n - 2].mnemonic(), Mnemonic::Vzeroupper);
            assert_eq!(ins[n - 1].mnemonic(), Mnemonic::Ret);
            // The frame: pushes popped in reverse, `sub rsp` undone by `add rsp`.
            let regs = |m: Mnemonic| -> Vec<Register> {
                ins.iter()
                    .filter(|i| i.mnemonic() == m)
                    .map(|i| i.op0_register())
                    .collect()
            };
            let mut pops = regs(Mnemonic::Pop);
            pops.reverse();
            assert_eq!(regs(Mnemonic::Push), pops, "{what}");
            let rsp_imm = |m: Mnemonic| -> Vec<u64> {
                ins.iter()
                    .filter(|i| i.mnemonic() == m && i.op0_register() == Register::RSP)
                    .map(|i| i.immediate(1))
                    .collect()
            };
            assert_eq!(rsp_imm(Mnemonic::Sub), rsp_imm(Mnemonic::Add), "{what}");
            assert_eq!(rsp_imm(Mnemonic::Sub).len(), 1, "{what}");
        }
    }
}

/// A compiled model on the avx2 path calls the 256-bit kernel.
#[test]
fn avx2_path_calls_the_kernel() {
    if !KernelPath::supported().contains(&KernelPath::Avx2) {
        eprintln!("host without the avx2 path; skipping");
        return;
    }
    let text = kernel_disasm(Popcount::Auto, KernelPath::Avx2);
    assert!(text.contains("machine-code kernel"), "{text}");
    assert!(text.contains("vpshufb ymm"), "{text}");
    assert!(text.contains("vpmaddubsw ymm"), "{text}");
    assert!(
        !text.contains("zmm"),
        "AVX-512 code on the avx2 path:\n{text}"
    );
}
