//! One step of the plan: the op's kernel on its operands' storage.
//!
//! A plain `match` over the op (and, for `grad`, over the forward op and
//! what it is differentiated with respect to) that fetches parameters and
//! caches and calls the kernel of the op's family. Operands and the output
//! arrive as slices of exactly the value's size; every kernel writes its
//! whole output (buffers are reused, never assumed zero).

use super::conv::{Conv, Scratch};
use super::elementwise::{self as ew, sign_of};
use super::gemm::dense_forward;
use super::norm::{self, BnCache};
use super::par::Par;
use super::plan::Step;
use super::pool::{self, Window};
use super::{BinaryWeights, EngineError};
use crate::ir::ops::{BinaryOutput, Op, PadValue, Scale, Statistic, Stats, WeightKind};
use crate::ir::params::Params;

/// What every step of a run shares.
pub(super) struct Ctx<'a> {
    /// Threads.
    pub par: Par,
    /// Samples in the batch.
    pub batch: usize,
    /// The parameters.
    pub params: &'a Params,
    /// Prepared binary weights, by the plan's binary-layer index.
    pub binary: &'a [BinaryWeights],
    /// Compiled sign packing, where the JIT is available.
    pub packer: Option<&'a super::packer::Packer>,
    /// Per binary layer, its forward on the 512-bit kernel.
    pub wide: &'a [Option<super::WideLayer>],
}

/// What steps of a run write besides their outputs.
pub(super) struct State<'a> {
    /// Batchnorm caches, by the plan's batchnorm index.
    pub bn: &'a mut [BnCache],
    /// Per-thread convolution buffers.
    pub scratch: &'a mut [Scratch],
    /// Per-thread packed input rows of `bdense`.
    pub bits: &'a mut [Vec<u64>],
    /// Per-thread buffers of the XNOR convolution.
    pub xnor_scratch: &'a mut [super::xnor_conv::XnorScratch],
}

impl Ctx<'_> {
    /// The parameter `NODE.suffix`, checked to have `shape`.
    pub(super) fn param(
        &self,
        node: &str,
        suffix: &str,
        shape: &[usize],
    ) -> Result<&[f32], EngineError> {
        super::param(self.params, &format!("{node}.{suffix}"), shape)
    }
}

/// `[O, C/G, kh, kw]`: a convolution's weight shape over `c` input channels.
pub(super) fn conv_weight_shape(g: &crate::ir::ops::ConvGeometry, c: usize) -> [usize; 4] {
    [
        g.out_channels,
        c / g.groups.max(1),
        g.kernel[0],
        g.kernel[1],
    ]
}

/// Elements per channel of a `[C, ...]` sample.
pub(super) fn inner(dims: &[usize]) -> usize {
    dims.iter().skip(1).product()
}

/// The plan's cache index of a step that must have one.
pub(super) fn cache(step: &Step) -> Result<usize, EngineError> {
    step.cache.ok_or_else(|| EngineError::Unsupported {
        node: step.name.clone(),
        what: "a binary layer or batchnorm without a cache entry".into(),
    })
}

/// Applies a binary layer's output form to its dot products `v` of output
/// channel `o`, exactly as the interpreter does.
struct BinaryEpilogue<'a> {
    output: BinaryOutput,
    alpha: Option<&'a [f32]>,
    first: &'a [f32],
    second: &'a [f32],
}

impl BinaryEpilogue<'_> {
    fn apply(&self, o: usize, v: &mut [f32]) {
        match self.output {
            BinaryOutput::Dot => {
                if let Some(a) = self.alpha {
                    for e in v {
                        *e *= a[o];
                    }
                }
            }
            BinaryOutput::Affine => {
                for e in v {
                    *e = crate::ir::interp::affine_value(*e, self.first[o], self.second[o]);
                }
            }
            BinaryOutput::Threshold => {
                for e in v {
                    *e = crate::ir::interp::threshold_value(*e, self.first[o], self.second[o]);
                }
            }
        }
    }
}

fn epilogue<'a>(
    cx: &'a Ctx,
    step: &Step,
    output: BinaryOutput,
    scale: Scale,
    bw: &'a BinaryWeights,
    out: usize,
) -> Result<BinaryEpilogue<'a>, EngineError> {
    let (first, second): (&[f32], &[f32]) = match output {
        BinaryOutput::Dot => (&[], &[]),
        BinaryOutput::Affine => (
            cx.param(&step.name, "multiplier", &[out])?,
            cx.param(&step.name, "bias", &[out])?,
        ),
        BinaryOutput::Threshold => (
            cx.param(&step.name, "threshold", &[out])?,
            directions(cx.param(&step.name, "direction", &[out])?, &step.name)?,
        ),
    };
    Ok(BinaryEpilogue {
        output,
        alpha: scale.is_scaled().then_some(bw.alpha.as_slice()),
        first,
        second,
    })
}

/// Checks that every threshold direction is ±1.
fn directions<'p>(d: &'p [f32], node: &str) -> Result<&'p [f32], EngineError> {
    match d.iter().position(|&v| v != 1.0 && v != -1.0) {
        None => Ok(d),
        Some(c) => Err(EngineError::BadDirection {
            name: format!("{node}.direction"),
            channel: c,
            value: d[c],
        }),
    }
}

/// Scales row `o` of `g` (`[O, K]`) by `α_o` (when scaled) and zeroes the
/// entries whose value `v` (the latent weight, or `P∘W` through a
/// projection) lies outside `[−1, 1]` (the clipped STE); through a
/// projection `P` (`[K]`, empty for none) each entry is also multiplied by
/// `∂V/∂W = P_k`.
pub(super) fn latent_ste(
    g: &mut [f32],
    values: &[f32],
    alpha: Option<&[f32]>,
    projection: &[f32],
    out: usize,
) {
    let k = g.len() / out.max(1);
    for (o, row) in g.chunks_mut(k.max(1)).enumerate() {
        let a = alpha.map_or(1.0, |a| a[o]);
        for (j, (v, &w)) in row.iter_mut().zip(&values[o * k..]).enumerate() {
            *v = if w.abs() > 1.0 {
                0.0
            } else if projection.is_empty() {
                *v * a
            } else {
                *v * a * projection[j]
            };
        }
    }
}

/// The projection's gradient from the raw weight gradient `g` (`[O, K]`,
/// before [`latent_ste`]): `Σ_o g_ok·α_o·W_ok` over the entries whose `|V_ok|
/// <= 1`, in f64 (Gu et al. 2019, Eq. 3.55).
pub(super) fn projection_ste(
    g: &[f32],
    latent: &[f32],
    values: &[f32],
    alpha: Option<&[f32]>,
    out: usize,
) -> Vec<f64> {
    let k = g.len() / out.max(1);
    let mut sums = vec![0.0f64; k];
    for (o, row) in g.chunks(k.max(1)).enumerate() {
        let a = alpha.map_or(1.0, |a| a[o]) as f64;
        for (j, &gv) in row.iter().enumerate() {
            let i = o * k + j;
            if values[i].abs() <= 1.0 {
                sums[j] += gv as f64 * a * latent[i] as f64;
            }
        }
    }
    sums
}

/// The value padded positions of a binary convolution hold.
pub(super) fn pad_of(p: PadValue) -> f32 {
    match p {
        PadValue::Zero => 0.0,
        PadValue::One => 1.0,
    }
}

/// Rounds f64 sums into `out`.
pub(super) fn store(out: &mut [f32], sums: &[f64]) {
    for (d, &s) in out.iter_mut().zip(sums) {
        *d = s as f32;
    }
}

/// A batchnorm's mean and divisor: this run's batch statistics (from its
/// forward step) or its running statistics.
pub(super) fn bn_norm(
    cx: &Ctx,
    st: &State,
    step: &Step,
    stats: Stats,
    eps: f32,
    c: usize,
) -> Result<(Vec<f32>, Vec<f32>), EngineError> {
    match stats {
        Stats::Batch => {
            let b = &st.bn[cache(step)?];
            Ok((b.mean.clone(), b.std.clone()))
        }
        Stats::Running => {
            let mean = cx.param(&step.of_name, "running_mean", &[c])?.to_vec();
            let var = cx.param(&step.of_name, "running_var", &[c])?;
            let std = var
                .iter()
                .map(|&v| crate::ir::interp::batchnorm_std(v, eps))
                .collect();
            Ok((mean, std))
        }
    }
}

/// The latent weight shape of the layer a `quantization_loss` step (or its
/// `grad`) regularises: the step's operands are the layer, then its input.
pub(super) fn quantized_shape(step: &Step, layer: &Op) -> Result<Vec<usize>, EngineError> {
    let input = match &step.op {
        Op::Grad(_) => step.operand_dims.get(2),
        _ => step.operand_dims.get(1),
    };
    let channels = input.and_then(|d| d.first().copied()).unwrap_or(0);
    crate::ir::interp::loss_terms::binary_weight_shape(layer, channels)
        .map(|(shape, _)| shape)
        .ok_or_else(|| EngineError::Unsupported {
            node: step.name.clone(),
            what: format!("a quantization loss of a `{}`", layer.name()),
        })
}

/// Runs `step` on its operands `x`, writing `out`.
pub(super) fn exec(
    cx: &Ctx,
    st: &mut State,
    step: &Step,
    x: &[&[f32]],
    out: &mut [f32],
) -> Result<(), EngineError> {
    let par = cx.par;
    let d0 = step.operand_dims.first().map(Vec::as_slice).unwrap_or(&[]);
    let c0 = d0.first().copied().unwrap_or(0);
    match &step.op {
        Op::Input | Op::Flatten | Op::Identity => {}
        Op::Conv2d(a) => {
            let conv = Conv::new(&a.geometry, d0, &step.dims);
            let o = a.geometry.out_channels;
            let w = match a.weights {
                WeightKind::Real => {
                    cx.param(&step.name, "weight", &conv_weight_shape(&a.geometry, c0))?
                }
                WeightKind::Binary => &cx.binary[cache(step)?].scaled,
            };
            let bias = if a.bias {
                Some(cx.param(&step.name, "bias", &[o])?)
            } else {
                None
            };
            conv.forward(par, x[0], w, 0.0, st.scratch, out, &|ch, v| {
                if let Some(b) = bias {
                    for e in v {
                        *e += b[ch];
                    }
                }
            });
        }
        Op::BConv2d(a) => {
            let conv = Conv::new(&a.geometry, d0, &step.dims);
            let bw = &cx.binary[cache(step)?];
            let ep = epilogue(cx, step, a.output, a.scale, bw, a.geometry.out_channels)?;
            if let (Some(Some(super::WideLayer::Conv(xc))), Some(bits)) =
                (cx.wide.get(cache(step)?), &bw.wide_bits)
                && xc.forward(par, x[0], bits, st.xnor_scratch, out, &|o, v| {
                    ep.apply(o, v)
                })
            {
                return Ok(());
            }
            conv.forward(
                par,
                x[0],
                &bw.signs,
                pad_of(a.pad_value),
                st.scratch,
                out,
                &|o, v| ep.apply(o, v),
            );
        }
        Op::Dense(a) => {
            let o = a.out_features;
            let w = match a.weights {
                WeightKind::Real => cx.param(&step.name, "weight", &[o, c0])?,
                WeightKind::Binary => &cx.binary[cache(step)?].scaled,
            };
            dense_forward(par, x[0], w, c0, o, out);
            if a.bias {
                let b = cx.param(&step.name, "bias", &[o])?;
                for row in out.chunks_mut(o) {
                    for (e, &bv) in row.iter_mut().zip(b) {
                        *e += bv;
                    }
                }
            }
        }
        Op::BDense(a) => {
            let o = a.out_features;
            let bw = &cx.binary[cache(step)?];
            let wide = match (cx.wide.get(cache(step)?), &bw.wide_bits) {
                (Some(Some(super::WideLayer::Dense(k))), Some(bits)) => Some((k, &**bits)),
                _ => None,
            };
            super::xnor::dense_forward(par, cx.packer, wide, x[0], &bw.packed, c0, o, st.bits, out);
            let ep = epilogue(cx, step, a.output, a.scale, bw, o)?;
            if a.output != BinaryOutput::Dot || a.scale.is_scaled() {
                for row in out.chunks_mut(o) {
                    for (ch, e) in row.iter_mut().enumerate() {
                        ep.apply(ch, std::slice::from_mut(e));
                    }
                }
            }
        }
        Op::Sign(_) => ew::map(par, x[0], out, sign_of),
        Op::BatchNorm(a) => {
            let gamma = cx.param(&step.name, "weight", &[c0])?;
            let beta = cx.param(&step.name, "bias", &[c0])?;
            let inner = inner(d0);
            let (mean, std) = match a.stats {
                Stats::Batch => {
                    let (m64, v64) = norm::moments(par, x[0], c0, inner);
                    let b = &mut st.bn[cache(step)?];
                    b.mean = m64.iter().map(|&m| m as f32).collect();
                    b.std = v64
                        .iter()
                        .map(|&v| crate::ir::interp::batchnorm_std(v as f32, a.eps))
                        .collect();
                    b.mean64 = m64;
                    b.var64 = v64;
                    b.moments = true;
                    (b.mean.clone(), b.std.clone())
                }
                Stats::Running => bn_norm(cx, st, step, Stats::Running, a.eps, c0)?,
            };
            norm::normalise(par, x[0], gamma, beta, &mean, &std, inner, out);
        }
        Op::Relu => ew::map(par, x[0], out, |v| if v > 0.0 { v } else { 0.0 }),
        Op::PRelu => {
            let slope = cx.param(&step.name, "weight", &[c0])?;
            ew::map_channels(par, x[0], c0, inner(d0), out, |c, v| {
                if v >= 0.0 { v } else { slope[c] * v }
            });
        }
        Op::Shift => {
            let b = cx.param(&step.name, "bias", &[c0])?;
            ew::map_channels(par, x[0], c0, inner(d0), out, |c, v| v + b[c]);
        }
        Op::HardTanh(a) => {
            let (lo, hi) = (a.min, a.max);
            // The interpreter's comparisons (a tie or a NaN gives the bound).
            ew::map(par, x[0], out, move |v| {
                let low = if v > lo { v } else { lo };
                if low < hi { low } else { hi }
            });
        }
        Op::MaxPool(p) => Window::new(p, d0, &step.dims).max(par, x[0], out),
        Op::AvgPool(p) => Window::new(p, d0, &step.dims).avg(par, x[0], out),
        Op::GlobalAvgPool => pool::global_avg(par, x[0], inner(d0), out),
        Op::Add => ew::add(par, x, out),
        Op::Concat => {
            let sizes: Vec<usize> = step
                .operand_dims
                .iter()
                .map(|d| d.iter().product())
                .collect();
            ew::concat(par, x, &sizes, out);
        }
        Op::SliceChannels(_) | Op::ShuffleChannels(_) => {
            let map = step.op.channel_sources(c0).expect("the op picks channels");
            ew::gather_channels(par, x[0], &map, c0, inner(d0), out);
        }
        Op::Zero => out.fill(0.0),
        Op::Choose => {
            let alpha = cx.param(&step.name, "alpha", &[x.len()])?;
            ew::choose(par, x, alpha, out);
        }
        Op::Threshold => {
            let t = cx.param(&step.name, "threshold", &[c0])?;
            let d = directions(cx.param(&step.name, "direction", &[c0])?, &step.name)?;
            ew::map_channels(par, x[0], c0, inner(d0), out, |c, v| {
                crate::ir::interp::threshold_value(v, t[c], d[c])
            });
        }
        Op::Affine => {
            let m = cx.param(&step.name, "multiplier", &[c0])?;
            let b = cx.param(&step.name, "bias", &[c0])?;
            ew::map_channels(par, x[0], c0, inner(d0), out, |c, v| {
                crate::ir::interp::affine_value(v, m[c], b[c])
            });
        }
        Op::CrossEntropy(a) => {
            out[0] = pool::cross_entropy(x[0], x[1], c0, a.smoothing);
        }
        Op::RunningStat(a) => {
            let xd = &step.operand_dims[1];
            let (c, inner) = (xd[0], inner(xd));
            let old = cx.param(&step.of_name, a.stat.param(), &[c])?;
            let b = &mut st.bn[cache(step)?];
            if !b.moments {
                let (m, v) = norm::moments(par, x[1], c, inner);
                b.mean64 = m;
                b.var64 = v;
                b.moments = true;
            }
            let m = (cx.batch * inner) as f64;
            let mom = a.momentum as f64;
            for ch in 0..c {
                let batch = match a.stat {
                    Statistic::Mean => b.mean64[ch],
                    Statistic::Var if m > 1.0 => b.var64[ch] * m / (m - 1.0),
                    Statistic::Var => b.var64[ch],
                };
                out[ch] = ((1.0 - mom) * old[ch] as f64 + mom * batch) as f32;
            }
        }
        Op::Grad(_) => super::backward::grad(cx, st, step, x, out)?,
        Op::QuantizationLoss(a) => {
            let bw = &cx.binary[cache(step)?];
            let layer = &step.operand_dims[0];
            let w = cx.param(&step.of_name, "weight", &quantized_shape(step, &a.of)?)?;
            let values = bw.values(w);
            out[0] =
                super::loss_terms::quantization_loss(par, values, &bw.scaled, layer[0], a.weight);
        }
        Op::DistributionLoss(a) => {
            out[0] = super::loss_terms::distribution_loss(par, x[0], c0, inner(d0), a.weight);
        }
    }
    Ok(())
}
