//! PC-DARTS's partial channel connections (Xu et al. 2020), as a way to
//! instantiate a cell: `cell op(x, c) partial(x, c, K) { ... }`.
//!
//! An instance of such a cell with ratio `K > 1` computes its body on the
//! first `C/K` channels of `x` (and with `c/K` in place of `c`, so every
//! operation inside is `K` times narrower); the other `C − C/K` channels
//! bypass it, max-pooled 2×2 with stride 2 when the body halves the
//! resolution (a reduction edge, as PC-DARTS does); the two are concatenated
//! and shuffled in `K` groups, so that the next edge's slice sees channels of
//! both. With `K = 1` (or [`LowerOptions::partial_channels`] `Some(1)`) the
//! cell is an ordinary one: that is the full-width network a search derives
//! its architecture on. The body's nodes are named as in an ordinary
//! instance, so the two lowerings share every `choose` name.

use super::*;

/// The split of one partial instance, waiting for the body's value.
pub(super) struct Split {
    /// The channels that bypass the body.
    bypass: NodeId,
    /// `K`.
    ratio: usize,
    /// `C/K`, the channels the body computes on and must return.
    narrow: usize,
    /// The `partial(...)` clause, where errors point.
    clause: Span,
    /// The call that instantiates the cell.
    call: Span,
}

impl<'a> Lowerer<'a> {
    /// A node the `partial` clause at `clause` adds (errors point at the
    /// clause, as if it had been written `op(...)` there).
    fn clause_node(
        &mut self,
        name: String,
        op: Op,
        word: &str,
        operands: &[NodeId],
        clause: Span,
    ) -> Result<NodeId, Diagnostic> {
        let callee = Ident {
            name: word.to_string(),
            span: clause,
        };
        let operands: Vec<(NodeId, Span)> = operands.iter().map(|&id| (id, clause)).collect();
        match self.add_node(&name, None, op, &operands, &callee)? {
            Value::Tensor(id) => Ok(id),
            _ => unreachable!("add_node makes a tensor"),
        }
    }

    /// Applies `cell`'s `partial` clause to an instance's arguments `params`:
    /// the tensor parameter becomes its first `C/K` channels and the channel
    /// count `C/K`. `None` when the cell has no clause or its ratio is 1.
    pub(super) fn partial_split(
        &mut self,
        cell: &'a ast::Cell,
        params: &mut [(&'a Ident, Value)],
        name: &str,
        call: Span,
    ) -> Result<Option<Split>, Diagnostic> {
        let Some(p) = &cell.partial else {
            return Ok(None);
        };
        let (k, k_span) = p.ratio;
        let ratio = match self.options.partial_channels {
            Some(k) => k,
            None if k >= 1 && k <= u32::MAX as i64 => k as usize,
            None => {
                return Err(Diagnostic::at(
                    k_span,
                    format!("the ratio of `partial` must be a positive integer, found {k}"),
                    "expected K ≥ 1",
                ));
            }
        };
        let position = |param: &Ident| {
            params
                .iter()
                .position(|(q, _)| q.name == param.name)
                .ok_or_else(|| {
                    Diagnostic::at(
                        param.span,
                        format!(
                            "`partial` names `{}`, which is not a parameter of cell `{}`",
                            param.name, cell.name.name
                        ),
                        "not a parameter",
                    )
                })
        };
        let (xi, ci) = (position(&p.input)?, position(&p.channels)?);
        if ratio == 1 {
            return Ok(None);
        }
        let wrong_kind = |param: &Ident, i: usize, role: &str, expected: &str| {
            Diagnostic::at(
                param.span,
                format!(
                    "`partial` {role} `{}`, which is {} in this instance",
                    param.name,
                    params[i].1.describe(&self.graph)
                ),
                expected,
            )
            .with_secondary(call, "in this instance")
        };
        let Value::Tensor(x) = params[xi].1 else {
            let role = "splits the channels of";
            return Err(wrong_kind(
                &p.input,
                xi,
                role,
                "expected a tensor parameter",
            ));
        };
        let Value::Int(c) = params[ci].1 else {
            let role = "divides the channel count";
            return Err(wrong_kind(
                &p.channels,
                ci,
                role,
                "expected an integer parameter",
            ));
        };
        let ty = self.graph.node(x).ty.clone();
        let channels = ty.dims().first().copied().unwrap_or(0);
        if ty.dims().len() != 3 || c != channels as i64 || channels % ratio != 0 {
            return Err(Diagnostic::at(
                p.span,
                format!(
                    "`partial` with K = {ratio} needs `{}` to be a [C, H, W] tensor of `{}` = C \
                     channels, C a multiple of K; here `{}` is {ty} and `{}` is {c}",
                    p.input.name, p.channels.name, p.input.name, p.channels.name
                ),
                "the clause",
            )
            .with_secondary(call, "in this instance"));
        }
        let narrow = channels / ratio;
        let slice = |start, count| Op::SliceChannels(SliceChannels { start, count });
        let through = self.clause_node(
            format!("{name}.partial_in"),
            slice(0, narrow),
            "slice_channels",
            &[x],
            p.span,
        )?;
        let bypass = self.clause_node(
            format!("{name}.partial_bypass"),
            slice(narrow, channels - narrow),
            "slice_channels",
            &[x],
            p.span,
        )?;
        params[xi].1 = Value::Tensor(through);
        params[ci].1 = Value::Int(narrow as i64);
        Ok(Some(Split {
            bypass,
            ratio,
            narrow,
            clause: p.span,
            call,
        }))
    }

    /// Joins the body's value `y` to the channels that bypassed it, then
    /// shuffles them: the instance's value.
    pub(super) fn partial_join(
        &mut self,
        split: Split,
        y: Value,
        name: &str,
    ) -> Result<Value, Diagnostic> {
        let Value::Tensor(y) = y else {
            return Err(Diagnostic::at(
                split.clause,
                format!(
                    "a `partial` cell must return a tensor, found {}",
                    y.describe(&self.graph)
                ),
                "this clause",
            )
            .with_secondary(split.call, "in this instance"));
        };
        let (y_ty, b_ty) = (
            self.graph.node(y).ty.clone(),
            self.graph.node(split.bypass).ty.clone(),
        );
        let halved = |d: usize| d / 2;
        let shape_ok = y_ty.dims().len() == 3 && y_ty.dims()[0] == split.narrow;
        let same = shape_ok && y_ty.dims()[1..] == b_ty.dims()[1..];
        let reduced = shape_ok
            && b_ty.dims()[1] % 2 == 0
            && b_ty.dims()[2] % 2 == 0
            && y_ty.dims()[1..] == [halved(b_ty.dims()[1]), halved(b_ty.dims()[2])];
        if !same && !reduced {
            return Err(Diagnostic::at(
                split.clause,
                format!(
                    "a `partial` cell's body must return its input's C/K = {} channels at the \
                     input's resolution or at half of it (even sizes), found {y_ty} for the \
                     bypassed {b_ty}",
                    split.narrow
                ),
                "the clause",
            )
            .with_secondary(split.call, "in this instance"));
        }
        let mut bypass = split.bypass;
        if reduced {
            let pool = Op::MaxPool(Pool {
                kernel: [2, 2],
                stride: [2, 2],
                pad: [0, 0],
            });
            bypass = self.clause_node(
                format!("{name}.partial_pool"),
                pool,
                "maxpool",
                &[bypass],
                split.clause,
            )?;
        }
        let joined = self.clause_node(
            format!("{name}.partial_concat"),
            Op::Concat,
            "concat",
            &[y, bypass],
            split.clause,
        )?;
        let shuffle = Op::ShuffleChannels(ShuffleChannels {
            groups: split.ratio,
        });
        let shuffled = self.clause_node(
            format!("{name}.partial"),
            shuffle,
            "shuffle_channels",
            &[joined],
            split.clause,
        )?;
        Ok(Value::Tensor(shuffled))
    }
}
