//! Assembly check: a binary layer's kernel uses the hardware popcount
//! (`vpopcntb` where the host has AVX-512 BITALG, else `popcnt`) and no
//! software popcount sequence (no nibble-table `pshufb`, no shift-and-mask
//! bit counting).

use onebit::ir::Params;
use onebit::{CompiledModel, Options, Popcount};

const SRC: &str = "model a { input x: f32[64, 6, 6]
  y = sign(batchnorm(bconv2d(sign(x), 64, kernel=3, pad=1, pad_value=1)))
  output y }";

fn kernel_disasm(popcount: Popcount) -> String {
    let graph = onebit::parse(SRC).unwrap();
    let params = Params::init(&graph, 1);
    let options = Options {
        popcount,
        disasm: true,
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
    let text = kernel_disasm(Popcount::Auto);
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
}

#[test]
fn scalar_path_uses_popcnt() {
    let text = kernel_disasm(Popcount::Scalar);
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
