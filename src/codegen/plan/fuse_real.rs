//! Fusion into the real-valued layers of the `avx512` path: a per-channel
//! f32 op (`batchnorm`, `affine`, `prelu`) whose only operand is a real
//! layer's output, with that op its only user and not a model output,
//! becomes part of the FMA kernel's epilogue (`kernels::wide::fconv`); a
//! `sign` after that (of a layer with one group) makes the kernel pack the
//! sign bits itself (`vcmpps` + `kmovw`, the same "negative or NaN" test as
//! the elementwise packer).
//!
//! Sound because the kernel evaluates each fused op with the interpreter's
//! IEEE operations in the interpreter's order on the value it would
//! otherwise have stored: the fused result is the one the separate
//! elementwise step computes, bit for bit (the `avx512` differential tests
//! compile each model also with the real layers as outputs, which stops
//! the fusion, and require identical results). The portable path keeps its
//! real layers bit-identical to the interpreter and fuses nothing.

use super::{Planner, Step};
use crate::ir::{DType, NodeId};

/// A per-channel op fused into a real layer's epilogue.
#[derive(Clone, Debug)]
pub enum Post {
    /// `γ·(y − μ)/std + β`.
    BatchNorm {
        /// γ.
        gamma: Vec<f32>,
        /// μ.
        mean: Vec<f32>,
        /// `sqrt(σ² + ε)`.
        std: Vec<f32>,
        /// β.
        beta: Vec<f32>,
    },
    /// `m·y + b`.
    Affine {
        /// Multipliers.
        mul: Vec<f32>,
        /// Biases.
        bias: Vec<f32>,
    },
    /// `y ≥ 0 ? y : a·y`.
    PRelu(Vec<f32>),
}

impl Planner<'_> {
    /// Fuses `post`, the op of node `id` on `x`, into the FMA kernel that
    /// produces `x`; false (nothing changed) where that is not possible.
    pub(super) fn try_fuse_real_post(&mut self, x: NodeId, id: NodeId, post: &Post) -> bool {
        if !self.fusable(x) {
            return false;
        }
        let Some(&s) = self.producer.get(&x) else {
            return false;
        };
        let Step::FloatConv(f) = &mut self.steps[s].1 else {
            return false;
        };
        // After a fused sign, `x` is bits: an op on them is not the
        // layer's epilogue (found by the random-graph test).
        if f.fma.is_none() || f.bits {
            return false;
        }
        f.post.push(post.clone());
        let t = self.values[&x].clone();
        self.producer.insert(id, s);
        self.values.insert(id, t);
        true
    }

    /// Fuses `sign` (node `sign` of `x`) into the FMA kernel producing `x`
    /// (after any fused ops); false (nothing changed) where that is not
    /// possible.
    pub(super) fn try_fuse_real_sign(&mut self, x: NodeId, sign: NodeId) -> bool {
        if !self.fusable(x) {
            return false;
        }
        let Some(&s) = self.producer.get(&x) else {
            return false;
        };
        match &self.steps[s].1 {
            Step::FloatConv(f) if f.fma.is_some() && f.groups == 1 && !f.bits => {}
            _ => return false,
        }
        let dims = self.graph.node(sign).ty.dims().to_vec();
        let bits = self.tensor(DType::Bit, &dims);
        if let Step::FloatConv(f) = &mut self.steps[s].1 {
            f.bits = true;
            f.dst = bits.buf;
        }
        self.producer.insert(sign, s);
        self.values.insert(sign, bits);
        true
    }
}
