//! Op calls: a call's arguments read into the typed attributes of its op
//! (positional or keyword, numbers, pairs, words, geometries), checked
//! against ops.md's ranges with the argument's span in every error, and the
//! op built from them.

use super::*;

impl<'a> Lowerer<'a> {
    pub(super) fn tensor(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
        param: &'static str,
    ) -> Result<(NodeId, Span), Diagnostic> {
        let Some((e, child)) = args.take(param)? else {
            return Err(args.missing(param, "a tensor"));
        };
        let v = self.eval(scope, e, &child, None)?;
        Ok((
            self.expect_tensor(v, e.span, &format!("`{param}`"))?,
            e.span,
        ))
    }

    pub(super) fn number(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
        param: &'static str,
    ) -> Result<Option<(Value, Span)>, Diagnostic> {
        let Some((e, child)) = args.take(param)? else {
            return Ok(None);
        };
        // An op call or a choose makes a tensor; not evaluating it here keeps
        // the evaluator's recursion on the operands' path alone. A cell call
        // may return a number or pair (`kernel=k()`), so it is evaluated.
        let what = match &e.kind {
            ExprKind::Call { callee, .. } if !self.cells.contains_key(callee.name.as_str()) => {
                Some(format!("a call of `{}`", callee.name))
            }
            ExprKind::Choose(_) => Some("a `choose`".to_string()),
            _ => None,
        };
        if let Some(what) = what {
            return Err(Diagnostic::at(
                e.span,
                format!("`{param}` needs a number, found {what}"),
                "expected a number",
            ));
        }
        let v = self.eval(scope, e, &child, None)?;
        Ok(Some((v, e.span)))
    }

    pub(super) fn int(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
        param: &'static str,
        default: Option<usize>,
        min: usize,
    ) -> Result<usize, Diagnostic> {
        let Some((v, span)) = self.number(scope, args, param)? else {
            return default.ok_or_else(|| args.missing(param, "an integer"));
        };
        match v {
            Value::Int(i) if i >= min as i64 && i <= u32::MAX as i64 => Ok(i as usize),
            Value::Int(i) => Err(Diagnostic::at(
                span,
                format!(
                    "`{param}` must be an integer from {min} to {}, found {i}",
                    u32::MAX
                ),
                "out of range",
            )),
            other => Err(Diagnostic::at(
                span,
                format!(
                    "`{param}` needs an integer, found {}",
                    other.describe(&self.graph)
                ),
                "expected an integer",
            )),
        }
    }

    pub(super) fn pair(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
        param: &'static str,
        default: Option<Pair>,
        min: usize,
    ) -> Result<Pair, Diagnostic> {
        let Some((v, span)) = self.number(scope, args, param)? else {
            return default.ok_or_else(|| args.missing(param, "an integer or an (h, w) pair"));
        };
        let check = |x: i64| -> Result<usize, Diagnostic> {
            if x >= min as i64 && x <= u32::MAX as i64 {
                Ok(x as usize)
            } else {
                Err(Diagnostic::at(
                    span,
                    format!("`{param}` must be at least {min} (and below 2^32), found {x}"),
                    "out of range",
                ))
            }
        };
        match v {
            Value::Int(x) => {
                let x = check(x)?;
                Ok([x, x])
            }
            Value::Pair(h, w) => Ok([check(h)?, check(w)?]),
            other => Err(Diagnostic::at(
                span,
                format!(
                    "`{param}` needs an integer or an (h, w) pair of integers, found {}",
                    other.describe(&self.graph)
                ),
                "expected an integer or a pair",
            )),
        }
    }

    pub(super) fn float(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
        param: &'static str,
        default: f32,
    ) -> Result<f32, Diagnostic> {
        let Some((v, span)) = self.number(scope, args, param)? else {
            return Ok(default);
        };
        match v {
            Value::Int(i) => Ok(i as f32),
            Value::Float(x) if (x as f32).is_finite() => Ok(x as f32),
            Value::Float(x) => Err(Diagnostic::at(
                span,
                format!("`{param}` is {x:?}, too large for an f32 (at most about 3.4e38)"),
                "out of range",
            )),
            other => Err(Diagnostic::at(
                span,
                format!(
                    "`{param}` needs a number, found {}",
                    other.describe(&self.graph)
                ),
                "expected a number",
            )),
        }
    }

    /// `pad_value`: 0 or 1, default 0.
    pub(super) fn pad_value(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
    ) -> Result<PadValue, Diagnostic> {
        match self.number(scope, args, "pad_value")? {
            None | Some((Value::Int(0), _)) => Ok(PadValue::Zero),
            Some((Value::Int(1), _)) => Ok(PadValue::One),
            Some((other, span)) => Err(Diagnostic::at(
                span,
                format!(
                    "`pad_value` must be 0 or 1, found {}",
                    other.describe(&self.graph)
                ),
                "expected 0 or 1",
            )
            .with_note(
                "what padded positions of a binary convolution hold: 0 adds nothing, 1 adds +1",
            )),
        }
    }

    /// A word attribute such as `scale=channel`: a bare name, not looked up.
    pub(super) fn word<T: Copy>(
        &mut self,
        args: &mut Args<'a>,
        param: &'static str,
        choices: &[(&str, T)],
        default: T,
    ) -> Result<T, Diagnostic> {
        let Some((e, _)) = args.take(param)? else {
            return Ok(default);
        };
        let words: Vec<String> = choices.iter().map(|c| format!("`{}`", c.0)).collect();
        let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
        let (found, label) = match &e.kind {
            ExprKind::Name(w) => {
                if let Some(&(_, v)) = choices.iter().find(|c| c.0 == w) {
                    return Ok(v);
                }
                let label = match suggest(w, &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "not one of the choices".to_string(),
                };
                (format!(", found `{w}`"), label)
            }
            ExprKind::Literal(Literal::Int(v)) => {
                (format!(", found {v}"), "expected a word".into())
            }
            ExprKind::Literal(Literal::Float(v)) => {
                (format!(", found {v:?}"), "expected a word".into())
            }
            _ => (String::new(), "expected a word".into()),
        };
        Err(Diagnostic::at(
            e.span,
            format!("`{param}` must be one of {}{found}", words.join(", ")),
            label,
        ))
    }

    pub(super) fn geometry(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
    ) -> Result<ConvGeometry, Diagnostic> {
        Ok(ConvGeometry {
            out_channels: self.int(scope, args, "out_channels", None, 1)?,
            kernel: self.pair(scope, args, "kernel", None, 1)?,
            stride: self.pair(scope, args, "stride", Some([1, 1]), 1)?,
            pad: self.pair(scope, args, "pad", Some([0, 0]), 0)?,
            dilation: self.pair(scope, args, "dilation", Some([1, 1]), 1)?,
            groups: self.int(scope, args, "groups", Some(1), 1)?,
        })
    }

    pub(super) fn pool(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
    ) -> Result<Pool, Diagnostic> {
        let kernel = self.pair(scope, args, "kernel", None, 1)?;
        Ok(Pool {
            kernel,
            stride: self.pair(scope, args, "stride", Some(kernel), 1)?,
            pad: self.pair(scope, args, "pad", Some([0, 0]), 0)?,
        })
    }

    /// Reads the arguments of op `kind` in its signature's order
    /// (`ir-spec/ops.md` lists each signature): the tensor operands, then the
    /// attributes.
    pub(super) fn build_op(
        &mut self,
        scope: &mut Scope<'a>,
        kind: OpKind,
        args: &mut Args<'a>,
    ) -> Result<(Op, Vec<(NodeId, Span)>), Diagnostic> {
        match kind {
            OpKind::Add | OpKind::Concat => self.variadic(scope, kind, args),
            OpKind::CrossEntropy => {
                let logits = self.tensor(scope, args, "input")?;
                let target = self.tensor(scope, args, "target")?;
                let smoothing = self.float(scope, args, "smoothing", 0.0)?;
                Ok((
                    Op::CrossEntropy(CrossEntropy { smoothing }),
                    vec![logits, target],
                ))
            }
            OpKind::RunningStat => {
                let (bn, span) = self.tensor(scope, args, "of")?;
                let Op::BatchNorm(_) = self.graph.node(bn).op else {
                    return Err(Diagnostic::at(
                        span,
                        format!(
                            "`running_stat` needs a batchnorm, found `{}`",
                            self.graph.node(bn).op.name()
                        ),
                        "expected a batchnorm node",
                    ));
                };
                let stat = self.word(args, "stat", &STATISTIC, Statistic::Mean)?;
                let momentum = self.float(scope, args, "momentum", 0.1)?;
                let x = self.graph.operands(bn)[0];
                Ok((
                    Op::RunningStat(RunningStat { stat, momentum }),
                    vec![(bn, span), (x, span)],
                ))
            }
            OpKind::Grad => self.grad(scope, args),
            OpKind::QuantizationLoss => {
                let (layer, span) = self.tensor(scope, args, "of")?;
                let of = self.graph.node(layer).op.clone();
                let weight = self.float(scope, args, "weight", 1.0)?;
                let Some(&x) = self.graph.operands(layer).first() else {
                    return Err(Diagnostic::at(
                        span,
                        format!(
                            "`quantization_loss` needs a binary layer, found `{}`",
                            of.name()
                        ),
                        "expected a layer with binary weights",
                    ));
                };
                Ok((
                    Op::QuantizationLoss(QuantizationLoss {
                        weight,
                        of: Box::new(of),
                    }),
                    vec![(layer, span), (x, span)],
                ))
            }
            OpKind::DistributionLoss => {
                let x = self.tensor(scope, args, "input")?;
                let weight = self.float(scope, args, "weight", 1.0)?;
                Ok((Op::DistributionLoss(DistributionLoss { weight }), vec![x]))
            }
            OpKind::Input | OpKind::Choose => Err(Diagnostic::at(
                args.callee.span,
                format!("`{}` is not called like an op", kind.name()),
                "here",
            )),
            _ => {
                let x = self.tensor(scope, args, "input")?;
                let op = self.attributes(scope, kind, args)?;
                Ok((op, vec![x]))
            }
        }
    }

    /// `grad(of, dy, wrt=...)`: the operands are the forward node, its own
    /// operands, and the upstream gradient (none for a loss).
    pub(super) fn grad(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
    ) -> Result<(Op, Vec<(NodeId, Span)>), Diagnostic> {
        let (of, span) = self.tensor(scope, args, "of")?;
        let forward = self.graph.node(of).op.clone();
        let mut operands = vec![(of, span)];
        operands.extend(self.graph.operands(of).into_iter().map(|o| (o, span)));
        if !forward.kind().is_loss() {
            operands.push(self.tensor(scope, args, "dy")?);
        }
        let Some((e, _)) = args.take("wrt")? else {
            return Err(args.missing("wrt", "an operand index or a parameter"));
        };
        let role = match &e.kind {
            ExprKind::Name(w) => ParamRole::ALL.into_iter().find(|r| r.name() == w),
            _ => None,
        };
        let wrt = match (&e.kind, role) {
            (ExprKind::Literal(Literal::Int(i)), _) if *i >= 0 => Wrt::Operand(*i as usize),
            (_, Some(role)) => Wrt::Param(role),
            _ => {
                return Err(Diagnostic::at(
                    e.span,
                    "`wrt` must be an operand index or one of `weight`, `bias`, `alpha`",
                    "expected an operand index or a parameter",
                ));
            }
        };
        Ok((
            Op::Grad(Grad {
                of: Box::new(forward),
                wrt,
            }),
            operands,
        ))
    }

    /// The operands of `add` or `concat`: every positional argument.
    pub(super) fn variadic(
        &mut self,
        scope: &mut Scope<'a>,
        kind: OpKind,
        args: &mut Args<'a>,
    ) -> Result<(Op, Vec<(NodeId, Span)>), Diagnostic> {
        let mut operands = Vec::new();
        for (e, child) in args.rest() {
            let v = self.eval(scope, e, &child, None)?;
            operands.push((
                self.expect_tensor(v, e.span, &format!("an operand of `{}`", kind.name()))?,
                e.span,
            ));
        }
        if !kind.arity().allows(operands.len()) {
            return Err(Diagnostic::at(
                args.callee.span,
                format!(
                    "`{}` takes {}, found {}",
                    kind.name(),
                    kind.arity(),
                    operands.len()
                ),
                format!("needs {}", kind.arity()),
            ));
        }
        let op = if kind == OpKind::Add {
            Op::Add
        } else {
            Op::Concat
        };
        Ok((op, operands))
    }

    /// The op `kind` of a single-operand op, with its attributes read from `args`.
    pub(super) fn attributes(
        &mut self,
        scope: &mut Scope<'a>,
        kind: OpKind,
        args: &mut Args<'a>,
    ) -> Result<Op, Diagnostic> {
        Ok(match kind {
            OpKind::Conv2d => Op::Conv2d(Conv2d {
                geometry: self.geometry(scope, args)?,
                bias: self.word(args, "bias", &BOOL, true)?,
                weights: self.word(args, "weights", &WEIGHT_KIND, WeightKind::Real)?,
                scale: self.word(args, "scale", &SCALE, Scale::None)?,
                projection: self.word(args, "projection", &BOOL, false)?,
            }),
            OpKind::BConv2d => Op::BConv2d(BConv2d {
                geometry: self.geometry(scope, args)?,
                pad_value: self.pad_value(scope, args)?,
                scale: self.word(args, "scale", &SCALE, Scale::None)?,
                output: self.word(args, "output", &OUTPUT, BinaryOutput::Dot)?,
                weights: self.word(args, "weights", &WEIGHTS, WeightForm::Latent)?,
                projection: self.word(args, "projection", &BOOL, false)?,
            }),
            OpKind::Dense => Op::Dense(Dense {
                out_features: self.int(scope, args, "out_features", None, 1)?,
                bias: self.word(args, "bias", &BOOL, true)?,
                weights: self.word(args, "weights", &WEIGHT_KIND, WeightKind::Real)?,
                scale: self.word(args, "scale", &SCALE, Scale::None)?,
                projection: self.word(args, "projection", &BOOL, false)?,
            }),
            OpKind::BDense => Op::BDense(BDense {
                out_features: self.int(scope, args, "out_features", None, 1)?,
                scale: self.word(args, "scale", &SCALE, Scale::None)?,
                output: self.word(args, "output", &OUTPUT, BinaryOutput::Dot)?,
                weights: self.word(args, "weights", &WEIGHTS, WeightForm::Latent)?,
                projection: self.word(args, "projection", &BOOL, false)?,
            }),
            OpKind::BatchNorm => Op::BatchNorm(BatchNorm {
                eps: self.float(scope, args, "eps", 1e-5)?,
                stats: self.word(args, "stats", &STATS, Stats::Running)?,
            }),
            OpKind::HardTanh => Op::HardTanh(HardTanh {
                min: self.float(scope, args, "min", -1.0)?,
                max: self.float(scope, args, "max", 1.0)?,
            }),
            OpKind::SliceChannels => Op::SliceChannels(SliceChannels {
                start: self.int(scope, args, "start", None, 0)?,
                count: self.int(scope, args, "count", None, 1)?,
            }),
            OpKind::ShuffleChannels => Op::ShuffleChannels(ShuffleChannels {
                groups: self.int(scope, args, "groups", None, 1)?,
            }),
            OpKind::MaxPool => Op::MaxPool(self.pool(scope, args)?),
            OpKind::AvgPool => Op::AvgPool(self.pool(scope, args)?),
            OpKind::Sign => Op::Sign(Sign {
                grad: self.word(args, "grad", &SIGN_GRAD, SignGrad::Ste)?,
            }),
            OpKind::Relu => Op::Relu,
            OpKind::PRelu => Op::PRelu,
            OpKind::Shift => Op::Shift,
            OpKind::GlobalAvgPool => Op::GlobalAvgPool,
            OpKind::Flatten => Op::Flatten,
            OpKind::Zero => Op::Zero,
            OpKind::Identity => Op::Identity,
            OpKind::Threshold => Op::Threshold,
            OpKind::Affine => Op::Affine,
            OpKind::Add
            | OpKind::Concat
            | OpKind::Input
            | OpKind::Choose
            | OpKind::CrossEntropy
            | OpKind::RunningStat
            | OpKind::Grad
            | OpKind::QuantizationLoss
            | OpKind::DistributionLoss => {
                unreachable!("build_op handles `{kind}` itself")
            }
        })
    }
}
