//! Ahead-of-time compilation: the object file, linked into a C harness with
//! `cc`, gives the JIT's results (several inputs and outputs included; on
//! `avx512` the 600-channel dense layer splits its channels, so the object
//! carries the kernel addresses its units choose between).

use std::process::Command;

#[path = "jit_common/mod.rs"]
mod common;

use onebit::codegen::target::{HostFeatures, KernelPath, Kernels, TargetCpu};
use onebit::codegen::{self, Options};
use onebit::ir::{Params, Tensor, interp};

const SRC: &str = "model two_io {
  input x: f32[3, 6, 5]
  input z: f32[16]
  c = batchnorm(conv2d(x, 16, kernel=3, pad=1))
  b = sign(batchnorm(bconv2d(sign(c), 16, kernel=3, pad=1)))
  g = global_avgpool(maxpool(b, 2))
  h = dense(add(g, z), 600, bias=true)
  y = bdense(sign(h), 10, scale=channel)
  output y
  output g
}";

#[test]
fn object_file_matches_jit() {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("no C compiler; skipping");
        return;
    }
    for path in KernelPath::supported() {
        object_matches_jit_on(path, TargetCpu::Host);
    }
}

/// An object for a named CPU uses only that CPU's instructions (read off
/// the disassembly) and the best kernel path it runs; where this machine
/// runs it too, it computes what the JIT and the interpreter do.
#[test]
fn an_object_for_another_cpu_keeps_to_its_instructions() {
    let have_tools = Command::new("cc").arg("--version").output().is_ok()
        && Command::new("objdump").arg("--version").output().is_ok();
    if !have_tools {
        eprintln!("no C compiler or objdump; skipping");
        return;
    }
    let host = HostFeatures::detect();
    // (CPU, its kernel path, whether it may use VEX, ymm, zmm encodings,
    // whether this machine runs it).
    let cases = [
        ("x86-64", KernelPath::Portable, [false, false, false], true),
        (
            "x86-64-v2",
            KernelPath::Portable,
            [false, false, false],
            true,
        ),
        (
            "x86-64-v3",
            KernelPath::Avx2,
            [true, true, false],
            host.avx2_bnn,
        ),
        (
            "icelake-server",
            KernelPath::Avx512,
            [true, true, true],
            host.avx512_bnn && host.vector_popcnt,
        ),
    ];
    let graph = onebit::parse(SRC).unwrap();
    let params = Params::init(&graph, 21);
    for (cpu, path, [vex, ymm, zmm], runs) in cases {
        let target = TargetCpu::parse(cpu).unwrap();
        let options = Options {
            target: target.clone(),
            ..Options::default()
        };
        let (bytes, lowered) =
            codegen::object::compile(onebit::verify(&graph).unwrap(), &params, &options).unwrap();
        assert_eq!(lowered.path, path, "{cpu}");
        let dir = std::env::temp_dir().join(format!("onebit-cpu-{}-{cpu}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.o"), bytes).unwrap();
        let out = Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(dir.join("model.o"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mnemonics: Vec<&str> = text.lines().filter_map(|l| l.split('\t').nth(1)).collect();
        assert!(
            mnemonics.len() > 100,
            "{cpu}: {} instructions",
            mnemonics.len()
        );
        let uses_vex = mnemonics.iter().any(|m| m.starts_with('v'));
        let (uses_ymm, uses_zmm) = (text.contains("%ymm"), text.contains("%zmm"));
        assert!(vex || !uses_vex, "{cpu}: a VEX/EVEX instruction");
        assert!(ymm || !uses_ymm, "{cpu}: a ymm register");
        assert!(zmm || !uses_zmm, "{cpu}: a zmm register");
        // The wide paths do use their registers.
        assert_eq!(uses_zmm, path == KernelPath::Avx512, "{cpu}");
        assert!(uses_ymm || path != KernelPath::Avx2, "{cpu}");
        std::fs::remove_dir_all(&dir).ok();
        if runs {
            object_matches_jit_on(path, target);
        }
    }
    let err = TargetCpu::parse("pentium9").unwrap_err().to_string();
    assert!(err.contains("unknown target CPU `pentium9`"), "{err}");
    // The JIT compiles for this machine only.
    let jit = onebit::compile_graph(
        &graph,
        &params,
        &Options {
            target: TargetCpu::parse("x86-64-v2").unwrap(),
            ..Options::default()
        },
    );
    let err = jit.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("the JIT compiles for this machine"), "{err}");
}

/// The object compiled for `path` against the JIT on `path` (identical: the
/// same code), and against the interpreter's outputs: exact on `portable`
/// and `avx2`, within the propagated bound of `ir-spec/codegen.md` on `avx512` (its
/// `conv2d` runs on the FMA kernel).
fn object_matches_jit_on(path: KernelPath, target: TargetCpu) {
    let options = Options {
        kernels: Kernels::Force(path),
        target: target.clone(),
        ..Options::default()
    };
    // The JIT compiles the same graph on the same kernel path for this
    // machine.
    let jit_options = Options {
        target: TargetCpu::Host,
        ..options.clone()
    };
    let graph = onebit::parse(SRC).unwrap();
    let params = Params::init(&graph, 21);
    let (bytes, lowered) =
        codegen::object::compile(onebit::verify(&graph).unwrap(), &params, &options).unwrap();
    assert_eq!(lowered.path, path);
    let dir = std::env::temp_dir().join(format!(
        "onebit-aot-{}-{}-{}",
        std::process::id(),
        path.name(),
        target.name()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.o"), bytes).unwrap();
    std::fs::write(
        dir.join("model.h"),
        codegen::object::header(&graph.name, &lowered),
    )
    .unwrap();
    let batch = 3;
    let x: Vec<f32> = (0..batch * 90)
        .map(|i| ((i * 7) % 13) as f32 / 4.0 - 1.5)
        .collect();
    let z: Vec<f32> = (0..batch * 16)
        .map(|i| ((i * 5) % 11) as f32 / 8.0 - 0.6)
        .collect();
    let list = |v: &[f32]| {
        v.iter()
            .map(|f| format!("{f:?}f"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let harness = format!(
        r#"#include <stdio.h>
#include <stdlib.h>
#include "model.h"
static const float x[] = {{{}}};
static const float z[] = {{{}}};
int main(void) {{
  float y[{batch} * 10], g[{batch} * 16];
  void *scratch = malloc(two_io_scratch_bytes({batch}));
  if (two_io_run(x, z, y, g, {batch}, scratch) != 0) return 1;
  for (int i = 0; i < {batch} * 10; i++) printf("%.9g\n", y[i]);
  for (int i = 0; i < {batch} * 16; i++) printf("%.9g\n", g[i]);
  free(scratch);
  return 0;
}}
"#,
        list(&x),
        list(&z)
    );
    std::fs::write(dir.join("main.c"), harness).unwrap();
    let status = Command::new("cc")
        .current_dir(&dir)
        .args(["-O1", "main.c", "model.o", "-o", "harness"])
        .status()
        .unwrap();
    assert!(status.success(), "cc failed");
    let out = Command::new(dir.join("harness")).output().unwrap();
    assert!(out.status.success());
    let c_values: Vec<f32> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let model = onebit::compile_graph(&graph, &params, &jit_options).unwrap();
    let jit = model.run_many(&[&x, &z], batch).unwrap();
    let expected: Vec<f32> = jit.concat();
    assert_eq!(c_values, expected, "{path:?}");
    let reference = interp::run(
        &graph,
        &params,
        &[
            Tensor {
                shape: vec![batch, 3, 6, 5],
                data: x.clone(),
            },
            Tensor {
                shape: vec![batch, 16],
                data: z.clone(),
            },
        ],
    )
    .unwrap();
    let reference: Vec<f32> = reference.into_iter().flat_map(|t| t.data).collect();
    if !path.fma() {
        assert_eq!(c_values, reference, "{path:?}: object vs interpreter");
    } else {
        // The real-valued conv2d runs on the FMA kernel: the JIT (equal to
        // the object, above) layer by layer against the interpreter.
        let inputs = [
            Tensor {
                shape: vec![batch, 3, 6, 5],
                data: x.clone(),
            },
            Tensor {
                shape: vec![batch, 16],
                data: z.clone(),
            },
        ];
        let (got, seen) = common::bound::check_cut(
            &format!("{path:?}: JIT vs interpreter"),
            &graph,
            &params,
            &inputs,
            &jit_options,
            true,
        );
        assert_eq!(got.concat(), c_values, "{path:?}");
        assert!(seen.real_values > 0, "{seen:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn clif_text_is_available() {
    let graph = onebit::parse(SRC).unwrap();
    let params = Params::init(&graph, 1);
    // The portable path: its binary kernel is Cranelift IR.
    let options = Options {
        emit_clif: true,
        kernels: Kernels::Force(KernelPath::Portable),
        ..Options::default()
    };
    let (_, lowered) =
        codegen::object::compile(onebit::verify(&graph).unwrap(), &params, &options).unwrap();
    assert!(
        lowered.clif.contains("popcnt"),
        "{}",
        &lowered.clif[..200.min(lowered.clif.len())]
    );
    assert!(lowered.clif.contains("function"));
}
