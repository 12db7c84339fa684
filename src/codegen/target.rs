//! The host target: Cranelift's native ISA with the host's CPU features,
//! `opt_level=speed`, and the features the kernels choose between.
//!
//! `cranelift_native::builder()` detects SSE/AVX/AVX-512 flags, including
//! `has_avx512bitalg` and `has_avx512vl`, which turn `popcnt.i8x16` into one
//! `vpopcntb`; without them Cranelift lowers it to a `pshufb` nibble lookup.

use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};

use super::CodegenError;

/// What the kernels need to know about the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFeatures {
    /// `vpopcntb` on 128-bit vectors (AVX-512 BITALG + VL).
    pub vector_popcnt: bool,
    /// Scalar `popcnt`.
    pub scalar_popcnt: bool,
}

impl HostFeatures {
    /// Detects the features of the machine this runs on.
    pub fn detect() -> HostFeatures {
        #[cfg(target_arch = "x86_64")]
        {
            HostFeatures {
                vector_popcnt: std::is_x86_feature_detected!("avx512bitalg")
                    && std::is_x86_feature_detected!("avx512vl"),
                scalar_popcnt: std::is_x86_feature_detected!("popcnt"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            HostFeatures {
                vector_popcnt: false,
                scalar_popcnt: false,
            }
        }
    }
}

/// Builds the host ISA. `pic` is set for object files (position-independent
/// code links into PIE executables); the JIT needs it off.
pub fn host_isa(pic: bool) -> Result<OwnedTargetIsa, CodegenError> {
    let mut flags = settings::builder();
    let set = |flags: &mut settings::Builder, k: &str, v: &str| {
        flags
            .set(k, v)
            .map_err(|e| CodegenError::Target(format!("{k}={v}: {e}")))
    };
    set(&mut flags, "opt_level", opt_level())?;
    set(&mut flags, "is_pic", if pic { "true" } else { "false" })?;
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "enable_verifier", "false")?;
    let isa = cranelift_native::builder().map_err(|e| CodegenError::Target(e.to_string()))?;
    isa.finish(settings::Flags::new(flags))
        .map_err(|e| CodegenError::Target(e.to_string()))
}

/// Cranelift's optimisation level: `speed`, or `ONEBIT_OPT_LEVEL`
/// (`none`, `speed`, `speed_and_size`).
///
/// The binary kernels run their receptive field as a loop, one step per
/// iteration (`kernels::binary`), so the e-graph pass can no longer sink the
/// pure xor/popcount/add chains of a long straight-line field past all its
/// loads, which spilled the whole tile at `speed`; weights are loaded per
/// use, so the step needs 8 accumulators + 4 broadcasts + 1 temporary of the
/// 16 xmm registers and neither level spills. Measured on the S1 layer
/// (`cargo bench --bench bconv`, same-run ratios to the f32 GEMM, shared
/// 2-core machine, three alternating runs): layer 3.85×/4.17× at `speed`,
/// 3.94× at `none`, i.e. equal within noise; resnet18_bnn compiles in
/// 65–105 ms at `speed` and 60–90 ms at `none`, both far below the 250 ms
/// budget. So `speed`, as the issue asks: the f32 and elementwise kernels
/// get its GVN and LICM for free.
fn opt_level() -> &'static str {
    match std::env::var("ONEBIT_OPT_LEVEL").as_deref() {
        Ok("none") => "none",
        Ok("speed_and_size") => "speed_and_size",
        _ => "speed",
    }
}
