//! Argument checks that clap cannot express by itself: ranges and sizes.
//! A value out of range is bad usage (exit 2), reported by clap with the
//! option's name.

use onebit::ir::limits::{self, Limits};

/// The most worker threads `--threads` accepts. More than this is never
/// useful on the machines onebit targets, and each thread costs a stack.
pub const MAX_THREADS: usize = 256;

/// `--threads`: 1 up to [`MAX_THREADS`].
pub fn threads(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from 1 to {MAX_THREADS}")),
    }
}

/// `--kernels`: `auto`, `portable`, `avx2` or `avx512` (the kernel path of the
/// binary layers; `auto` is `ONEBIT_KERNELS` or the best the CPU runs).
pub fn kernels(text: &str) -> Result<onebit::codegen::target::Kernels, String> {
    text.parse()
        .map_err(|e: onebit::CodegenError| e.to_string())
}

/// `--target-cpu`: `host` or a Cranelift x86-64 preset.
pub fn target_cpu(text: &str) -> Result<onebit::codegen::target::TargetCpu, String> {
    onebit::codegen::target::TargetCpu::parse(text).map_err(|e| e.to_string())
}

/// `--top-k` and `--batch`: at least 1.
pub fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number of at least 1".into()),
    }
}

/// `--max-memory`, `--max-code`: a byte count such as `4GiB`.
pub fn size(text: &str) -> Result<u64, String> {
    limits::parse_bytes(text)
}

/// The resource limits every command checks before allocating.
#[derive(clap::Args, Clone, Copy)]
pub struct LimitArgs {
    /// The most memory for parameters plus activations, e.g. 4GiB, 512MiB.
    #[arg(long, value_parser = size, default_value = "4GiB", value_name = "BYTES")]
    pub max_memory: u64,
    /// The most (estimated) machine code the JIT may generate.
    #[arg(long, value_parser = size, default_value = "64MiB", value_name = "BYTES")]
    pub max_code: u64,
}

impl LimitArgs {
    /// As the library's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_memory: self.max_memory,
            max_code: self.max_code,
        }
    }
}
