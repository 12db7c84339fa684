//! The per-layer model summary printed by `onebit check`, in the spirit of
//! `larq.models.summary`: output shapes, binary and real parameter counts,
//! binary and real MACs, parameter memory, and the model size packed against
//! float32.
//!
//! Counting rules: a binary layer's weights are 1-bit parameters (its latent
//! real weights are a training artefact, not part of the deployed model); every
//! other parameter is 32-bit. MACs are those of convolutions and dense layers,
//! per sample: `O · OH · OW · (C/G) · kh · kw` and `O · K`.

use std::fmt;

use super::graph::{Graph, NodeId};
use super::ops::Op;
use super::params::node_params;

/// One row of the summary: one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Node name.
    pub name: String,
    /// Op name.
    pub op: &'static str,
    /// Result type, e.g. `bit[32, 8, 8]`.
    pub output: String,
    /// 1-bit parameters.
    pub binary_params: u64,
    /// 32-bit parameters.
    pub real_params: u64,
    /// Binary multiply-accumulates per sample.
    pub binary_macs: u64,
    /// Real multiply-accumulates per sample.
    pub real_macs: u64,
}

impl Row {
    /// Parameter memory in bytes, binary parameters packed to one bit.
    pub fn memory_bytes(&self) -> u64 {
        self.binary_params.div_ceil(8) + 4 * self.real_params
    }
}

/// The summary of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The model's name.
    pub model: String,
    /// One row per node, in topological order.
    pub rows: Vec<Row>,
}

/// MACs of node `id` per sample: `(binary, real)`.
pub fn node_macs(graph: &Graph, id: NodeId) -> (u64, u64) {
    let node = graph.node(id);
    let in_dims = graph
        .operand_types(id)
        .first()
        .map(|t| t.dims().to_vec())
        .unwrap_or_default();
    let out = node.ty.shape.elements() as u64;
    let conv = |groups: usize, kernel: [usize; 2]| {
        let per_group = in_dims.first().copied().unwrap_or(0) / groups.max(1);
        out * (per_group * kernel[0] * kernel[1]) as u64
    };
    let k = in_dims.first().copied().unwrap_or(0) as u64;
    match &node.op {
        Op::Conv2d(a) => (0, conv(a.geometry.groups, a.geometry.kernel)),
        Op::BConv2d(a) => (conv(a.geometry.groups, a.geometry.kernel), 0),
        Op::Dense(_) => (0, out * k),
        Op::BDense(_) => (out * k, 0),
        _ => (0, 0),
    }
}

impl Summary {
    /// Summarises `graph`.
    pub fn new(graph: &Graph) -> Summary {
        let order = graph
            .topo_order()
            .unwrap_or_else(|_| graph.node_ids().collect());
        let rows = order
            .into_iter()
            .map(|id| {
                let node = graph.node(id);
                let (mut binary_params, mut real_params) = (0, 0);
                for p in node_params(graph, id) {
                    if p.binary {
                        binary_params += p.elements() as u64;
                    } else {
                        real_params += p.elements() as u64;
                    }
                }
                let (binary_macs, real_macs) = node_macs(graph, id);
                Row {
                    name: node.name.clone(),
                    op: node.op.name(),
                    output: node.ty.to_string(),
                    binary_params,
                    real_params,
                    binary_macs,
                    real_macs,
                }
            })
            .collect();
        Summary {
            model: graph.name.clone(),
            rows,
        }
    }

    /// Sum of a column.
    fn total(&self, f: impl Fn(&Row) -> u64) -> u64 {
        self.rows.iter().map(f).sum()
    }

    /// Model size in bytes with binary weights packed to one bit.
    pub fn packed_bytes(&self) -> u64 {
        self.total(Row::memory_bytes)
    }

    /// Model size in bytes with every parameter stored as float32.
    pub fn float_bytes(&self) -> u64 {
        4 * self.total(|r| r.binary_params + r.real_params)
    }
}

/// `1234567` as `1,234,567`: how every count is printed.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn kib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1024.0)
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.2} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = [
            "layer",
            "op",
            "output",
            "1-bit params",
            "32-bit params",
            "1-bit MACs",
            "32-bit MACs",
            "memory KiB",
        ];
        let mut table: Vec<[String; 8]> = vec![header.map(str::to_string)];
        for r in &self.rows {
            let num = |n: u64| {
                if n == 0 {
                    ".".to_string()
                } else {
                    thousands(n)
                }
            };
            table.push([
                r.name.clone(),
                r.op.to_string(),
                r.output.clone(),
                num(r.binary_params),
                num(r.real_params),
                num(r.binary_macs),
                num(r.real_macs),
                if r.memory_bytes() == 0 {
                    ".".into()
                } else {
                    kib(r.memory_bytes())
                },
            ]);
        }
        table.push([
            "total".into(),
            String::new(),
            String::new(),
            thousands(self.total(|r| r.binary_params)),
            thousands(self.total(|r| r.real_params)),
            thousands(self.total(|r| r.binary_macs)),
            thousands(self.total(|r| r.real_macs)),
            kib(self.packed_bytes()),
        ]);
        let mut widths = [0usize; 8];
        for row in &table {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        writeln!(f, "model {}", self.model)?;
        let rule: String = widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ");
        for (i, row) in table.iter().enumerate() {
            if i == 1 || i == table.len() - 1 {
                writeln!(f, "{rule}")?;
            }
            let mut line = String::new();
            for (j, (cell, w)) in row.iter().zip(widths).enumerate() {
                if j > 0 {
                    line.push_str("  ");
                }
                // Text columns left-aligned, numbers right-aligned. Padding
                // by hand: `format!`'s width must fit in a u16, and a node
                // name may be longer than 65,535 characters.
                let pad = " ".repeat(w - cell.chars().count());
                if j < 3 {
                    line.push_str(cell);
                    line.push_str(&pad);
                } else {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        let (bm, rm) = (self.total(|r| r.binary_macs), self.total(|r| r.real_macs));
        let share = if bm + rm == 0 {
            0.0
        } else {
            100.0 * bm as f64 / (bm + rm) as f64
        };
        writeln!(f)?;
        writeln!(
            f,
            "MACs per sample: {} binary, {} real ({share:.1}% binary)",
            thousands(bm),
            thousands(rm)
        )?;
        let (packed, float) = (self.packed_bytes(), self.float_bytes());
        let ratio = if packed == 0 {
            1.0
        } else {
            float as f64 / packed as f64
        };
        write!(
            f,
            "model size: {} packed, {} as float32 ({ratio:.1}x smaller)",
            size(packed),
            size(float)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::parse_str;

    #[test]
    fn counts_binary_and_real_work() {
        let g = parse_str(
            "model m { input x: f32[3, 8, 8]\n c = conv2d(x, 16, kernel=3, pad=1)\n b = bconv2d(sign(c), 32, kernel=3, groups=2)\n d = bdense(flatten(sign(b)), 10)\n output d }",
        )
        .unwrap();
        let s = Summary::new(&g);
        let row = |n: &str| s.rows.iter().find(|r| r.name == n).unwrap();
        assert_eq!(row("c").real_params, 16 * 3 * 9 + 16);
        assert_eq!(row("c").real_macs, 16 * 64 * 27);
        assert_eq!(row("b").binary_params, 32 * 8 * 9);
        assert_eq!(row("b").binary_macs, 32 * 36 * 8 * 9);
        assert_eq!(row("d").binary_macs, 10 * 32 * 36);
        assert_eq!(s.float_bytes(), 4 * (16 * 27 + 16 + 32 * 72 + 10 * 1152));
        assert_eq!(
            s.packed_bytes(),
            4 * (16 * 27 + 16) + (32 * 72) / 8 + (10 * 1152) / 8
        );
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
