//! Fusion of the glue between layers into the steps that produce it: a
//! `sign` into its producer's epilogue (integer thresholds of a binary
//! layer, or packing in an elementwise step, also beside an f32 value that
//! has other users), a residual `add` into a binary layer's machine-code
//! epilogue, the zero padding of an image input into its conversion and of
//! packed signs into the elementwise step that packs them, and a `flatten`
//! before dense layers into their weights' order.
//!
//! Each is sound because the fused step performs the same IEEE operations,
//! in the same order, on the same values as the steps it replaces:
//! thresholds are derived by `exact_threshold` to switch exactly where the
//! f32 epilogue's sign does; packing and storing read the same register;
//! the residual is added after the epilogue's other operations (addition
//! commutes, so `shortcut + y` and `y + shortcut` are the same bits); and
//! padding is written by whoever writes the buffer. The differential tests
//! (`tests/jit_examples.rs`, `jit_fconv.rs`, `jit_pool.rs`) check every
//! fusion on every kernel path against the interpreter.

use super::{DType, Epilogue, EwOp, PaddedRows, Planner, Step, Tensor, exact_threshold, sign_only};
use crate::ir::NodeId;
use crate::ir::Op;

impl Planner<'_> {
    /// Fuses `sign(x)` into the producer of `x`; false if not possible.
    pub(super) fn try_fuse_sign(
        &mut self,
        x: NodeId,
        sign: NodeId,
        plus: &dyn Fn(usize, f32) -> bool,
    ) -> bool {
        let Some(&s) = self.producer.get(&x) else {
            return false;
        };
        let dims = self.graph.node(sign).ty.dims().to_vec();
        let kind = match &self.steps[s].1 {
            Step::Elementwise {
                pack: false, op, ..
            } if sign_only(plus, dims.first().copied().unwrap_or(1))
                && !matches!(op, EwOp::Threshold(..)) =>
            {
                None
            }
            Step::BinConv(b) if !b.epi.bits() => {
                let k = (b.cg * b.k[0] * b.k[1]) as i32;
                let epi = b.epi.clone();
                let Some(th) = exact_threshold(
                    |o, d| if plus(o, epi.eval(o, d)) { 1.0 } else { -1.0 },
                    b.o,
                    k,
                ) else {
                    return false;
                };
                Some((th, b.nr))
            }
            _ => return false,
        };
        let bits = self.tensor(DType::Bit, &dims);
        match (kind, &mut self.steps[s].1) {
            (None, Step::Elementwise { pack, dst, .. }) => {
                *pack = true;
                *dst = bits.buf;
            }
            (Some(((dir, t), nr)), Step::BinConv(b)) => {
                b.epi = Epilogue::Threshold { dir, t };
                b.dst = bits.buf;
                // The kernel writes whole register tiles of pixels.
                self.bufs[bits.buf] =
                    (8 * bits.cw() * bits.pos.div_ceil(nr) * nr).div_ceil(64) * 64;
            }
            _ => return false,
        }
        self.producer.insert(sign, s);
        self.values.insert(sign, bits);
        true
    }

    /// Fuses `add(a, b)` into the machine-code kernel of the binary layer
    /// that computes one operand, when the add is that value's only user:
    /// the kernel adds the other operand (the shortcut) to each f32 result
    /// before storing it, which is the same IEEE sum (addition commutes), and
    /// the sum is never written and read back. Only on the wide paths, whose
    /// kernels finish f32 results themselves (no zero-padding corrections),
    /// and only for a shortcut an earlier step computed.
    pub(super) fn try_fuse_residual(&mut self, id: NodeId, operands: &[NodeId]) -> bool {
        if !self.opts.fuse || operands.len() != 2 {
            return false;
        }
        for (k, &y) in operands.iter().enumerate() {
            let shortcut = operands[1 - k];
            let only_user = self.graph.users(y).len() == 1 && !self.graph.outputs().contains(&y);
            if shortcut == y || !only_user {
                continue;
            }
            let Some(&s) = self.producer.get(&y) else {
                continue;
            };
            let fits = matches!(&self.steps[s].1, Step::BinConv(b)
                if b.wide.is_some() && b.zero_pad.is_none() && !b.epi.bits()
                    && b.residual.is_none());
            // The shortcut must exist when the kernel runs: computed by an
            // earlier step (a downsampling branch may come after it).
            let earlier = matches!(self.producer.get(&shortcut), Some(&p) if p < s);
            let r = self.values[&shortcut].clone();
            let out = self.values[&y].clone();
            if !fits || !earlier || r.dtype != DType::F32 || (r.pos, r.c) != (out.pos, out.c) {
                continue;
            }
            let Step::BinConv(b) = &mut self.steps[s].1 else {
                continue;
            };
            b.residual = Some(r.buf);
            // The kernel reads whole tiles (and whole 16-channel blocks) of
            // the shortcut, as it writes them of its output.
            let need = self.bufs[out.buf] + 64;
            self.bufs[r.buf] = self.bufs[r.buf].max(need);
            self.producer.insert(id, s);
            self.values.insert(id, out);
            return true;
        }
        false
    }

    /// Has the row-wise input step that computes `x` write it zero-padded by
    /// `pad`, for a real convolution that is its only user, so no padding
    /// step copies it again. False where `x` is not such an input.
    pub(super) fn try_pad_input(&mut self, x: NodeId, pad: [usize; 2]) -> bool {
        let Some(&s) = self.producer.get(&x) else {
            return false;
        };
        let only_user = self.graph.users(x).len() == 1 && !self.graph.outputs().contains(&x);
        if !self.opts.fuse || !only_user {
            return false;
        }
        let Step::Input {
            dst,
            rows: Some(rows),
            ..
        } = &mut self.steps[s].1
        else {
            return false;
        };
        if rows.pad != [0, 0] {
            return false;
        }
        rows.pad = pad;
        let [h, w] = rows.hw;
        let buf = dst.buf;
        let bytes = 4 * dst.c * (h + 2 * pad[0]) * (w + 2 * pad[1]);
        self.bufs[buf] = self.bufs[buf].max(bytes.div_ceil(64) * 64);
        true
    }

    /// Has the elementwise step that packs the bits `x` write them straight
    /// into the zero-padded buffer of the binary layer that is their only
    /// user (spatial size `hw`, padding `pad`), so no padding step copies
    /// them again: the same words at padded addresses, the border zero
    /// words as the padding step writes. Only where the padded layout keeps
    /// the words of a pixel as they are (`aligned`: one group, or groups of
    /// whole words). False where `x` is not such a step.
    pub(super) fn try_pack_padded(
        &mut self,
        x: NodeId,
        hw: [usize; 2],
        pad: [usize; 2],
        aligned: bool,
    ) -> bool {
        let Some(&s) = self.producer.get(&x) else {
            return false;
        };
        let only_user = self.graph.users(x).len() == 1 && !self.graph.outputs().contains(&x);
        let bits = self.values[&x].clone();
        if !self.opts.fuse || !only_user || !aligned || bits.dtype != DType::Bit {
            return false;
        }
        let Step::Elementwise {
            pack: true,
            dst,
            pos,
            padded: padded @ None,
            ..
        } = &mut self.steps[s].1
        else {
            return false;
        };
        if *dst != bits.buf || *pos != hw[0] * hw[1] {
            return false;
        }
        *padded = Some(PaddedRows { hw, pad });
        let bytes = 8 * bits.cw() * (hw[0] + 2 * pad[0]) * (hw[1] + 2 * pad[1]);
        self.bufs[bits.buf] = self.bufs[bits.buf].max(bytes.div_ceil(64) * 64);
        true
    }

    /// Packs `sign(x)` in the elementwise step that computes `x` when `x`
    /// has other users too: the step stores the f32 value as before and the
    /// bits beside it, in the same pass over memory (Bi-Real's `add`, whose
    /// sum is both the next block's shortcut and its binary conv's input).
    /// False where `x` is not such a step.
    pub(super) fn try_pack_beside(&mut self, x: NodeId, sign: NodeId) -> bool {
        let Some(&s) = self.producer.get(&x) else {
            return false;
        };
        if !self.opts.fuse || self.values[&x].dtype != DType::F32 {
            return false;
        }
        let dims = self.graph.node(sign).ty.dims().to_vec();
        let bits = self.tensor(DType::Bit, &dims);
        match &mut self.steps[s].1 {
            Step::Elementwise {
                pack: pack @ false,
                keep: keep @ None,
                dst,
                op,
                ..
            } if !matches!(op, EwOp::Threshold(..)) => {
                *pack = true;
                *keep = Some(*dst);
                *dst = bits.buf;
            }
            _ => return false,
        }
        self.producer.insert(sign, s);
        self.values.insert(sign, bits);
        true
    }

    /// Leaves `flatten(x)` without a step when every user is a dense layer
    /// that reads it: the value stays `x`'s channels-last buffer, one
    /// position of `positions · channels` values in (position, channel)
    /// order, and each dense layer's weights are permuted to that order at
    /// compile time ([`stored_order`](Self::stored_order)). Sound because a
    /// dense layer is a sum over its inputs of products with their own
    /// weights: a binary layer's popcount is an integer sum, exact in any
    /// order; a real one's sum is reordered, so only on the FMA path, whose
    /// results are within the bound of any order anyway. Packed bits need
    /// whole 64-channel words per position (no padding bits inside the
    /// vector). False where that does not hold.
    pub(super) fn try_flatten_free(&mut self, id: NodeId, x: NodeId) -> bool {
        let src = self.values[&x].clone();
        let graph = self.graph;
        let users = graph.users(id);
        let dense_only = !users.is_empty()
            && !graph.outputs().contains(&id)
            && users.iter().all(|&u| {
                graph.operands(u).first() == Some(&id)
                    && match graph.node(u).op {
                        Op::BDense(_) => true,
                        Op::Dense(_) => self.opts.fma && src.dtype == DType::F32,
                        _ => false,
                    }
            });
        let whole_words = src.dtype == DType::F32 || src.c.is_multiple_of(64);
        if !self.opts.fuse || !dense_only || !whole_words {
            return false;
        }
        self.flat.insert(id, [src.pos, src.c]);
        let flat = Tensor {
            c: src.pos * src.c,
            pos: 1,
            ..src
        };
        self.values.insert(id, flat);
        true
    }

    /// The weights `w` (`[o][k]`, `k` in the IR's C order) of a dense layer
    /// reading `x`, in the order `x` is stored: permuted where `x` is a
    /// flatten left in channels-last order ([`try_flatten_free`]
    /// (Self::try_flatten_free)), else as they are.
    pub(super) fn stored_order<T: Copy>(&self, x: NodeId, w: Vec<T>, o: usize) -> Vec<T> {
        let Some(&[pos, c]) = self.flat.get(&x) else {
            return w;
        };
        let k = pos * c;
        (0..o)
            .flat_map(|r| (0..pos).flat_map(move |p| (0..c).map(move |ch| r * k + ch * pos + p)))
            .map(|i| w[i])
            .collect()
    }
}
