//! Resource limits, checked before anything large is allocated.
//!
//! A model that type-checks can still need more memory than the machine has:
//! `dense(x, 65536)` on a 65,536-wide input is 2³² parameters, 16 GiB as f32.
//! Allocating that aborts the process (Rust's allocator does not return
//! errors), so every command computes what a model will need from its types
//! alone, before initialising weights, running passes or compiling, and
//! refuses with an error naming the largest layer and the figure.
//!
//! What is counted (`ir-spec/README.md`, "Limits", lists the defaults):
//! - parameter bytes: every parameter as f32 (4 bytes), the form in which
//!   they are initialised, loaded and folded;
//! - activation bytes: every node's value for the whole batch as f32, which
//!   is what the interpreter keeps and an upper bound on the JIT's planned
//!   arena, plus the padded copy of the operand of every padded convolution
//!   and pool;
//! - code bytes: an estimate of the JIT's machine code, [`CODE_BYTES_PER_STEP`]
//!   per node, against the code part of the JIT's memory arena.
//!
//! Parameters and activations share one budget, [`Limits::max_memory`].
//! One sample of any value or padded copy must also stay below 2 GiB
//! ([`MAX_SAMPLE_BYTES`]), for the JIT's 32-bit offsets.

use std::fmt;

use super::graph::{Graph, NodeId};
use super::ops::Op;
use super::params::node_params;

/// Default of [`Limits::max_memory`]: 4 GiB.
pub const DEFAULT_MAX_MEMORY: u64 = 4 << 30;

/// Default of [`Limits::max_code`]: 64 MiB, the code part of the JIT's arena.
pub const DEFAULT_MAX_CODE: u64 = 64 << 20;

/// Estimated machine code per node. Measured: a chain of 20,000 `relu`s
/// compiles to well under 64 MiB; binary layers unroll short receptive fields
/// and stay within a few KiB.
pub const CODE_BYTES_PER_STEP: u64 = 1 << 10;

/// The most bytes of one sample of any value or padded copy: the JIT's
/// kernels address within a sample with 32-bit offsets. Not configurable.
pub const MAX_SAMPLE_BYTES: u64 = (1 << 31) - 1;

/// Configurable resource limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of parameters plus activations (for the whole batch).
    pub max_memory: u64,
    /// Estimated bytes of JIT machine code.
    pub max_code: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_memory: DEFAULT_MAX_MEMORY,
            max_code: DEFAULT_MAX_CODE,
        }
    }
}

/// What a model needs, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Parameters as f32.
    pub param_bytes: u64,
    /// Every node's value for the batch as f32.
    pub activation_bytes: u64,
    /// Estimated JIT machine code.
    pub code_bytes: u64,
}

/// A limit the model exceeds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// One layer's parameters alone exceed the memory limit.
    #[error(
        "`{node}`: {} parameters need {}; the limit is {} (set with --max-memory)",
        thousands(*count), Bytes(*bytes), Bytes(*limit)
    )]
    Parameters {
        /// The layer.
        node: String,
        /// Its parameter count.
        count: u64,
        /// Their bytes as f32.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// One layer's output for the batch alone exceeds the memory limit.
    #[error(
        "`{node}`: its output (with its padded input, if any) for a batch of {batch} is {} values and needs {}; the limit is {} (set with --max-memory)",
        thousands(*count), Bytes(*bytes), Bytes(*limit)
    )]
    Activation {
        /// The layer.
        node: String,
        /// The batch size.
        batch: usize,
        /// Values of its output for the batch.
        count: u64,
        /// Their bytes as f32.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// One sample of a layer's output or padded input is too large for the
    /// JIT's 32-bit offsets.
    #[error(
        "`{node}`: one sample of its {what} is {}; the JIT addresses within a sample with 32-bit offsets, so the limit is 2 GiB (for every engine, so that they accept the same models)",
        Bytes(*bytes)
    )]
    Sample {
        /// The layer.
        node: String,
        /// `output` or `padded input`.
        what: &'static str,
        /// Bytes of one sample as f32.
        bytes: u64,
    },
    /// The layers together exceed the memory limit.
    #[error(
        "model `{model}` needs {} ({} of parameters, {} of activations for a batch of {batch}; the largest layer is `{largest}`); the limit is {} (set with --max-memory)",
        Bytes(usage.param_bytes.saturating_add(usage.activation_bytes)),
        Bytes(usage.param_bytes), Bytes(usage.activation_bytes), Bytes(*limit)
    )]
    Memory {
        /// The model.
        model: String,
        /// What it needs.
        usage: Usage,
        /// The batch size.
        batch: usize,
        /// The layer with the most parameters plus activations.
        largest: String,
        /// The limit.
        limit: u64,
    },
    /// The estimated machine code exceeds the code limit.
    #[error(
        "model `{model}` has {} layers, an estimated {} of machine code; the limit is {} (set with --max-code)",
        thousands(*nodes), Bytes(*bytes), Bytes(*limit)
    )]
    Code {
        /// The model.
        model: String,
        /// Its node count.
        nodes: u64,
        /// The estimate.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
}

/// Checks what `graph` needs for a batch of `batch` against `limits`, from
/// the types alone (nothing is allocated).
pub fn check(graph: &Graph, batch: usize, limits: &Limits) -> Result<Usage, LimitError> {
    let mut usage = Usage::default();
    let mut largest = (0u64, String::new());
    let mut nodes = 0u64;
    for id in graph.node_ids() {
        nodes += 1;
        let node = graph.node(id);
        let count: u64 = node_params(graph, id)
            .iter()
            .map(|p| {
                p.shape
                    .iter()
                    .fold(1u64, |n, &d| n.saturating_mul(d as u64))
            })
            .fold(0, u64::saturating_add);
        let bytes = count.saturating_mul(4);
        if bytes > limits.max_memory {
            return Err(LimitError::Parameters {
                node: node.name.clone(),
                count,
                bytes,
                limit: limits.max_memory,
            });
        }
        // A node's value, plus the padded copy of its operand that
        // convolutions and pools build (the JIT for the whole batch): with a
        // large pad and stride it is far larger than the result.
        let padded = match &node.op {
            Op::Conv2d(a) => padded_values(graph, id, a.geometry.pad),
            Op::BConv2d(a) => padded_values(graph, id, a.geometry.pad),
            Op::MaxPool(p) | Op::AvgPool(p) => padded_values(graph, id, p.pad),
            _ => 0,
        };
        let output = (node.ty.shape.dims().iter()).fold(1u64, |n, &d| n.saturating_mul(d as u64));
        for (what, n) in [("output", output), ("padded input", padded)] {
            if n.saturating_mul(4) > MAX_SAMPLE_BYTES {
                return Err(LimitError::Sample {
                    node: node.name.clone(),
                    what,
                    bytes: n.saturating_mul(4),
                });
            }
        }
        let values = output.saturating_add(padded).saturating_mul(batch as u64);
        let act = values.saturating_mul(4);
        if act > limits.max_memory {
            return Err(LimitError::Activation {
                node: node.name.clone(),
                batch,
                count: values,
                bytes: act,
                limit: limits.max_memory,
            });
        }
        usage.param_bytes = usage.param_bytes.saturating_add(bytes);
        usage.activation_bytes = usage.activation_bytes.saturating_add(act);
        if bytes.saturating_add(act) > largest.0 || largest.1.is_empty() {
            largest = (bytes.saturating_add(act), node.name.clone());
        }
    }
    if usage.param_bytes.saturating_add(usage.activation_bytes) > limits.max_memory {
        return Err(LimitError::Memory {
            model: graph.name.clone(),
            usage,
            batch,
            largest: largest.1,
            limit: limits.max_memory,
        });
    }
    usage.code_bytes = nodes.saturating_mul(CODE_BYTES_PER_STEP);
    if usage.code_bytes > limits.max_code {
        return Err(LimitError::Code {
            model: graph.name.clone(),
            nodes,
            bytes: usage.code_bytes,
            limit: limits.max_code,
        });
    }
    Ok(usage)
}

/// `C·(H + 2ph)·(W + 2pw)` of node `id`'s first operand, 0 without padding.
fn padded_values(graph: &Graph, id: NodeId, pad: [usize; 2]) -> u64 {
    let operands = graph.operand_types(id);
    let Some(&[c, h, w]) = operands.first().map(|t| t.dims()) else {
        return 0;
    };
    if pad == [0, 0] {
        return 0;
    }
    let side = |n: usize, p: usize| (n as u64).saturating_add((p as u64).saturating_mul(2));
    (c as u64)
        .saturating_mul(side(h, pad[0]))
        .saturating_mul(side(w, pad[1]))
}

/// A byte count for people: `16 GiB`, `1.50 MiB`, `512 B`.
#[derive(Clone, Copy, Debug)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        let mut unit = None;
        let mut value = self.0 as f64;
        for u in UNITS {
            if value < 1024.0 {
                break;
            }
            value /= 1024.0;
            unit = Some(u);
        }
        match unit {
            None => write!(f, "{} B", self.0),
            Some(u) if value.fract() == 0.0 => write!(f, "{value} {u}"),
            Some(u) => write!(f, "{value:.2} {u}"),
        }
    }
}

/// Parses a byte count as the command line takes it: `4GiB`, `512MiB`,
/// `100KiB`, `1000` (bytes); also `G`, `M`, `K` and lower case.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        _ => {
            return Err(format!(
                "`{text}` is not a size; write e.g. 4GiB, 512MiB or 1000"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. 4GiB, 512MiB or 1000"))?;
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("`{text}` must be between 1 byte and 16 EiB"))
}

fn thousands(n: u64) -> String {
    super::summary::thousands(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::parse_str;

    #[test]
    fn a_huge_dense_layer_is_refused_before_allocation() {
        let g =
            parse_str("model m { input x: f32[65536]  y = dense(x, 65536)  output y }").unwrap();
        let err = check(&g, 1, &Limits::default()).unwrap_err().to_string();
        assert_eq!(
            err,
            "`y`: 4,295,032,832 parameters need 16.00 GiB; the limit is 4 GiB (set with --max-memory)"
        );
    }

    #[test]
    fn the_batch_counts() {
        let g = parse_str("model m { input x: f32[1024]  y = relu(x)  output y }").unwrap();
        let small = Limits {
            max_memory: 1 << 20,
            ..Limits::default()
        };
        assert!(check(&g, 1, &small).is_ok());
        let err = check(&g, 256, &small).unwrap_err().to_string();
        assert!(err.starts_with("model `m` needs 2 MiB"), "{err}");
    }

    #[test]
    fn the_padded_copy_of_a_convolution_counts() {
        // A 3×3 result, but a 60,004 × 60,004 padded input (14 GB as f32).
        let g = parse_str(
            "model m { input x: f32[1, 4, 4]  y = conv2d(x, 1, kernel=1, pad=30000, stride=30000)  output y }",
        )
        .unwrap();
        let err = check(&g, 1, &Limits::default()).unwrap_err().to_string();
        assert_eq!(
            err,
            "`y`: one sample of its padded input is 13.41 GiB; the JIT addresses within a sample with 32-bit offsets, so the limit is 2 GiB (for every engine, so that they accept the same models)"
        );
        // Under 2 GiB a sample, the memory limit applies to the padded copy.
        let g = parse_str(
            "model m { input x: f32[1, 4, 4]  y = conv2d(x, 1, kernel=1, pad=10000, stride=10000)  output y }",
        )
        .unwrap();
        let err = check(&g, 4, &Limits::default()).unwrap_err().to_string();
        assert!(err.starts_with("`y`: its output (with its padded input, if any) for a batch of 4 is 1,600,640,100 values"), "{err}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }
}
