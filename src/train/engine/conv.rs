//! Convolutions as im2col + GEMM, forward and both backward products.
//!
//! The batch is cut into one contiguous run of samples per thread; each
//! thread walks its run in blocks of `S` samples, `S` chosen so that the
//! patch matrix `cols[C·kh·kw, S·P]` (`P = OH·OW`, column `s·P + p`) stays
//! around 512 KiB, in cache. Per block and group `g`:
//! - forward: `cols` from `x` (padding holds `pad_value`), then
//!   `tmp[O_g, S·P] = W_g·cols_g`, scattered to `y[s, o, p]` (+ bias, or × the
//!   XNOR scale);
//! - `dx`: `tmp = dy` gathered to `[O, S·P]`, `dcols_g = W_gᵀ·tmp_g`, then
//!   col2im adds each patch entry back onto the input position it was read
//!   from (padding is dropped);
//! - `dW`: `part_g += tmp_g·cols_gᵀ` with the whole block as the reduction
//!   (`S·P` deep, which the GEMM kernels need to run at speed); each
//!   thread's partial sum is added to the others' in thread order at the end.
//!
//! Gathering into blocks of `S` samples costs one copy of the activations
//! but turns `N` thin per-sample products (`P` = 64 columns on the digits)
//! into a few wide ones.
//!
//! Depthwise convolutions (`groups = C = O`, the separable and dilated
//! convolutions of a DARTS cell) are the exception: per group the product
//! has one output row, which no GEMM runs at speed, so they are computed
//! directly on each padded plane, one tap at a time over whole output rows
//! (contiguous when the stride is 1, which the compiler vectorizes).

use super::gemm::{Mat, matmul};
use super::par::Par;
use crate::ir::ops::ConvGeometry;

/// Target size of one patch block, in f32 elements (512 KiB: measured a
/// little faster than 1 MiB and 2 MiB blocks on the digits CNN).
const BLOCK_ELEMENTS: usize = 128 * 1024;

/// Per-thread buffers of the convolution kernels, grown on first use.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// Patches `[C·kh·kw, S·P]`.
    pub cols: Vec<f32>,
    /// Outputs or gradients `[O, S·P]`.
    pub tmp: Vec<f32>,
    /// A partial weight gradient.
    pub part: Vec<f32>,
    /// One padded input (or input-gradient) plane.
    pub plane: Vec<f32>,
}

/// Grows `v` to at least `n` elements (never shrinks, so a buffer reaches
/// its size on the first run).
fn ensure(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// A convolution's sizes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Conv {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub dh: usize,
    pub dw: usize,
    pub oh: usize,
    pub ow: usize,
    pub groups: usize,
}

impl Conv {
    /// The sizes of `g` applied to a `[C, H, W]` operand whose result is
    /// `[O, OH, OW]` (both from the verified graph).
    pub fn new(g: &ConvGeometry, x: &[usize], y: &[usize]) -> Conv {
        Conv {
            c: x[0],
            h: x[1],
            w: x[2],
            o: g.out_channels,
            kh: g.kernel[0],
            kw: g.kernel[1],
            sh: g.stride[0],
            sw: g.stride[1],
            ph: g.pad[0],
            pw: g.pad[1],
            dh: g.dilation[0],
            dw: g.dilation[1],
            oh: y[1],
            ow: y[2],
            groups: g.groups.max(1),
        }
    }

    /// Whether each output channel filters its own input channel only
    /// (`groups = C = O > 1`): the direct depthwise path.
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.c && self.o == self.c
    }

    /// Whether any tap can fall outside the input.
    pub fn has_padding(&self) -> bool {
        self.ph > 0 || self.pw > 0
    }

    fn p(&self) -> usize {
        self.oh * self.ow
    }
    fn kk(&self) -> usize {
        self.kh * self.kw
    }
    /// Rows of the patch matrix of one group.
    fn ckg(&self) -> usize {
        self.c / self.groups * self.kk()
    }
    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.o * self.p()
    }
    /// Samples per block.
    fn block(&self) -> usize {
        (BLOCK_ELEMENTS / (self.c * self.kk() * self.p()).max(1)).max(1)
    }

    /// Padded plane sizes `(Hp, Wp)`.
    fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.ph, self.w + 2 * self.pw)
    }

    /// `cols[r, s·P + i·OW + j] = xpad[s, c, i·sh + u·dh, j·sw + v·dw]`, with
    /// `r = (c·kh + u)·kw + v`, for the `samples` samples of `x`. Each input
    /// plane is first copied into a padded plane (`xpad`, the border holding
    /// `pad`), so the patch rows are straight strided copies with no
    /// bounds logic.
    fn im2col(&self, x: &[f32], samples: usize, pad: f32, xpad: &mut Vec<f32>, cols: &mut [f32]) {
        let (p, ld) = (self.p(), samples * self.p());
        let (hp, wp) = self.padded();
        let xpad = ensure(xpad, hp * wp);
        xpad.fill(pad);
        let hw = self.h * self.w;
        for s in 0..samples {
            for c in 0..self.c {
                let plane = &x[(s * self.c + c) * hw..][..hw];
                for r in 0..self.h {
                    xpad[(r + self.ph) * wp + self.pw..][..self.w]
                        .copy_from_slice(&plane[r * self.w..][..self.w]);
                }
                for u in 0..self.kh {
                    for v in 0..self.kw {
                        let row = (c * self.kh + u) * self.kw + v;
                        let dst = &mut cols[row * ld + s * p..][..p];
                        for (i, d) in dst.chunks_exact_mut(self.ow).enumerate() {
                            let src = &xpad[(i * self.sh + u * self.dh) * wp + v * self.dw..];
                            if self.sw == 1 {
                                d.copy_from_slice(&src[..self.ow]);
                            } else {
                                for (dv, &sv) in d.iter_mut().zip(src.iter().step_by(self.sw)) {
                                    *dv = sv;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Conv::im2col`]: every entry of `cols` is added onto
    /// a padded plane, whose interior becomes `dx` (padding is dropped).
    fn col2im(&self, cols: &[f32], samples: usize, xpad: &mut Vec<f32>, dx: &mut [f32]) {
        let (p, ld) = (self.p(), samples * self.p());
        let (hp, wp) = self.padded();
        let dpad = ensure(xpad, hp * wp);
        let hw = self.h * self.w;
        for s in 0..samples {
            for c in 0..self.c {
                dpad.fill(0.0);
                for u in 0..self.kh {
                    for v in 0..self.kw {
                        let row = (c * self.kh + u) * self.kw + v;
                        let src = &cols[row * ld + s * p..][..p];
                        for (i, sr) in src.chunks_exact(self.ow).enumerate() {
                            let d = &mut dpad[(i * self.sh + u * self.dh) * wp + v * self.dw..];
                            if self.sw == 1 {
                                for (dv, &sv) in d[..self.ow].iter_mut().zip(sr) {
                                    *dv += sv;
                                }
                            } else {
                                for (dv, &sv) in d.iter_mut().step_by(self.sw).zip(sr) {
                                    *dv += sv;
                                }
                            }
                        }
                    }
                }
                self.crop_into(dpad, &mut dx[(s * self.c + c) * hw..][..hw]);
            }
        }
    }

    /// Forward: `y = conv(x, w)` with `pad_value` in the padding, then
    /// `epilogue(o, values)` on each output plane (bias or scale).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        par: Par,
        x: &[f32],
        w: &[f32],
        pad: f32,
        scratch: &mut [Scratch],
        y: &mut [f32],
        epilogue: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        if self.is_depthwise() {
            return self.depthwise_forward(par, x, w, pad, scratch, y, epilogue);
        }
        let (il, ol, p) = (self.in_len(), self.out_len(), self.p());
        let work = y.len() * self.ckg();
        let (og, ckg) = (self.o / self.groups, self.ckg());
        par.rows_with(y, ol, work, scratch, |s0, ys, sc| {
            let n = ys.len().checked_div(ol).unwrap_or(0);
            let mut s = 0;
            while s < n {
                let b = self.block().min(n - s);
                let cols = ensure(&mut sc.cols, self.c * self.kk() * b * p);
                self.im2col(&x[(s0 + s) * il..][..b * il], b, pad, &mut sc.plane, cols);
                let tmp = ensure(&mut sc.tmp, self.o * b * p);
                for g in 0..self.groups {
                    matmul(
                        og,
                        b * p,
                        ckg,
                        &mut tmp[g * og * b * p..],
                        b * p,
                        false,
                        Mat::rows(&w[g * og * ckg..], ckg),
                        Mat::rows(&cols[g * ckg * b * p..], b * p),
                    );
                }
                for sl in 0..b {
                    for o in 0..self.o {
                        let dst = &mut ys[(s + sl) * ol + o * p..][..p];
                        dst.copy_from_slice(&tmp[o * b * p + sl * p..][..p]);
                        epilogue(o, dst);
                    }
                }
                s += b;
            }
        });
    }

    /// Gathers `dy` of `b` samples into `tmp[O, b·P]`.
    fn gather(&self, dy: &[f32], b: usize, tmp: &mut [f32]) {
        let (p, ol) = (self.p(), self.out_len());
        for sl in 0..b {
            for o in 0..self.o {
                tmp[o * b * p + sl * p..][..p].copy_from_slice(&dy[sl * ol + o * p..][..p]);
            }
        }
    }

    /// `dx = convᵀ(dy, w)`: the input gradient.
    pub fn input_grad(
        &self,
        par: Par,
        dy: &[f32],
        w: &[f32],
        scratch: &mut [Scratch],
        dx: &mut [f32],
    ) {
        if self.is_depthwise() {
            return self.depthwise_input_grad(par, dy, w, scratch, dx);
        }
        let (il, ol, p) = (self.in_len(), self.out_len(), self.p());
        let work = dy.len() * self.ckg();
        let (og, ckg) = (self.o / self.groups, self.ckg());
        par.rows_with(dx, il, work, scratch, |s0, dxs, sc| {
            let n = dxs.len().checked_div(il).unwrap_or(0);
            let mut s = 0;
            while s < n {
                let b = self.block().min(n - s);
                let tmp = ensure(&mut sc.tmp, self.o * b * p);
                self.gather(&dy[(s0 + s) * ol..][..b * ol], b, tmp);
                let cols = ensure(&mut sc.cols, self.c * self.kk() * b * p);
                for g in 0..self.groups {
                    matmul(
                        ckg,
                        b * p,
                        og,
                        &mut cols[g * ckg * b * p..],
                        b * p,
                        false,
                        Mat::cols(&w[g * og * ckg..], ckg),
                        Mat::rows(&tmp[g * og * b * p..], b * p),
                    );
                }
                self.col2im(cols, b, &mut sc.plane, &mut dxs[s * il..][..b * il]);
                s += b;
            }
        });
    }

    /// `dW[O, C/G·kh·kw] = Σ_samples dy·patchesᵀ`, padding holding `pad`.
    #[allow(clippy::too_many_arguments)]
    pub fn weight_grad(
        &self,
        par: Par,
        x: &[f32],
        dy: &[f32],
        n: usize,
        pad: f32,
        scratch: &mut [Scratch],
        dw: &mut [f32],
    ) {
        if self.is_depthwise() {
            return self.depthwise_weight_grad(par, x, dy, n, pad, scratch, dw);
        }
        let (il, ol, p) = (self.in_len(), self.out_len(), self.p());
        let (og, ckg) = (self.o / self.groups, self.ckg());
        let wl = self.o * ckg;
        let work = dy.len() * ckg;
        let used = par.ranges_with(n, work, scratch, |range, sc| {
            let part = ensure(&mut sc.part, wl);
            part.fill(0.0);
            let mut s = range.start;
            while s < range.end {
                let b = self.block().min(range.end - s);
                let cols = ensure(&mut sc.cols, self.c * self.kk() * b * p);
                self.im2col(&x[s * il..][..b * il], b, pad, &mut sc.plane, cols);
                let tmp = ensure(&mut sc.tmp, self.o * b * p);
                self.gather(&dy[s * ol..][..b * ol], b, tmp);
                for g in 0..self.groups {
                    matmul(
                        og,
                        ckg,
                        b * p,
                        &mut part[g * og * ckg..],
                        ckg,
                        true,
                        Mat::rows(&tmp[g * og * b * p..], b * p),
                        Mat::cols(&cols[g * ckg * b * p..], b * p),
                    );
                }
                s += b;
            }
        });
        sum_parts(&scratch[..used], dw);
    }

    /// `xpad` (`[Hp, Wp]`) = the `[H, W]` `plane` with `pad` around it.
    fn pad_into(&self, plane: &[f32], pad: f32, xpad: &mut [f32]) {
        let wp = self.padded().1;
        xpad.fill(pad);
        for r in 0..self.h {
            xpad[(r + self.ph) * wp + self.pw..][..self.w]
                .copy_from_slice(&plane[r * self.w..][..self.w]);
        }
    }

    /// `plane` (`[H, W]`) = the interior of the padded plane `dpad`, the
    /// adjoint of [`Conv::pad_into`] (the padding's gradient is dropped).
    fn crop_into(&self, dpad: &[f32], plane: &mut [f32]) {
        let wp = self.padded().1;
        for r in 0..self.h {
            plane[r * self.w..][..self.w]
                .copy_from_slice(&dpad[(r + self.ph) * wp + self.pw..][..self.w]);
        }
    }

    /// Stride 1 both ways: the depthwise kernels then run each tap over one
    /// contiguous span of the padded plane (see [`Conv::wide_span`]).
    fn unit_stride(&self) -> bool {
        self.sh == 1 && self.sw == 1
    }

    /// With stride 1, output `(i, j)` at tap `(u, v)` reads padded element
    /// `(i + u·dh)·Wp + j + v·dw`: an output plane laid out `Wp` wide (the
    /// columns past `OW` are garbage, or zeros for a gradient) is one
    /// contiguous span per tap, `(OH − 1)·Wp + OW` long, long enough to
    /// vectorize where rows of 4 or 8 are not.
    fn wide_span(&self) -> usize {
        (self.oh.max(1) - 1) * self.padded().1 + self.ow
    }

    /// Where tap `t = u·kw + v` starts in the padded plane (stride 1).
    fn tap_offset(&self, t: usize) -> usize {
        let (u, v) = (t / self.kw, t % self.kw);
        u * self.dh * self.padded().1 + v * self.dw
    }

    /// `g` (`[OH, OW]`) laid out `Wp` wide, zeros between the rows.
    fn widen(&self, g: &[f32], wide: &mut [f32]) {
        let wp = self.padded().1;
        wide.fill(0.0);
        for (i, row) in g.chunks_exact(self.ow).enumerate() {
            wide[i * wp..][..self.ow].copy_from_slice(row);
        }
    }

    /// The padded-plane row that output row `i` reads at tap `(u, v)`, from
    /// its first element (every `sw`-th element after it is the next column).
    fn tap_row<'p>(&self, xpad: &'p [f32], i: usize, u: usize, v: usize) -> &'p [f32] {
        let wp = self.padded().1;
        &xpad[(i * self.sh + u * self.dh) * wp + v * self.dw..]
    }

    /// Depthwise forward: each output plane (`N·C` of them) from its own
    /// padded input plane, tap by tap.
    #[allow(clippy::too_many_arguments)]
    fn depthwise_forward(
        &self,
        par: Par,
        x: &[f32],
        w: &[f32],
        pad: f32,
        scratch: &mut [Scratch],
        y: &mut [f32],
        epilogue: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        let (hw, p, kk) = (self.h * self.w, self.p(), self.kk());
        let (hp, wp) = self.padded();
        par.rows_with(y, p, y.len() * kk, scratch, |first, planes, sc| {
            let xpad = ensure(&mut sc.plane, hp * wp);
            let wide = ensure(&mut sc.tmp, self.wide_span());
            for (k, dst) in planes.chunks_exact_mut(p).enumerate() {
                let plane = first + k;
                let c = plane % self.c;
                self.pad_into(&x[plane * hw..][..hw], pad, xpad);
                let wk = &w[c * kk..][..kk];
                if self.unit_stride() {
                    wide.fill(0.0);
                    for (t, &wt) in wk.iter().enumerate() {
                        let src = &xpad[self.tap_offset(t)..][..wide.len()];
                        for (a, &s) in wide.iter_mut().zip(src) {
                            *a += wt * s;
                        }
                    }
                    for (i, row) in dst.chunks_exact_mut(self.ow).enumerate() {
                        row.copy_from_slice(&wide[i * wp..][..self.ow]);
                    }
                } else {
                    self.taps_strided(xpad, wk, dst);
                }
                epilogue(c, dst);
            }
        });
    }

    /// Depthwise `dx`: each output-gradient plane spread back over a padded
    /// plane through the taps, whose interior is the input gradient.
    fn depthwise_input_grad(
        &self,
        par: Par,
        dy: &[f32],
        w: &[f32],
        scratch: &mut [Scratch],
        dx: &mut [f32],
    ) {
        let (hw, p, kk) = (self.h * self.w, self.p(), self.kk());
        let (hp, wp) = self.padded();
        par.rows_with(dx, hw, dy.len() * kk, scratch, |first, planes, sc| {
            let dpad = ensure(&mut sc.plane, hp * wp);
            let wide = ensure(&mut sc.tmp, self.wide_span());
            for (k, dst) in planes.chunks_exact_mut(hw).enumerate() {
                let plane = first + k;
                let c = plane % self.c;
                let g = &dy[plane * p..][..p];
                dpad.fill(0.0);
                if self.unit_stride() {
                    self.widen(g, wide);
                    for (t, &wt) in w[c * kk..][..kk].iter().enumerate() {
                        let d = &mut dpad[self.tap_offset(t)..][..wide.len()];
                        for (dv, &gv) in d.iter_mut().zip(wide.iter()) {
                            *dv += wt * gv;
                        }
                    }
                } else {
                    self.spread_strided(g, &w[c * kk..][..kk], dpad);
                }
                self.crop_into(dpad, dst);
            }
        });
    }

    /// `dst += conv(xpad)` through the taps `wk` of one channel, output row
    /// by output row: strides other than 1.
    fn taps_strided(&self, xpad: &[f32], wk: &[f32], dst: &mut [f32]) {
        dst.fill(0.0);
        for u in 0..self.kh {
            for v in 0..self.kw {
                let wt = wk[u * self.kw + v];
                for (i, row) in dst.chunks_exact_mut(self.ow).enumerate() {
                    let src = self.tap_row(xpad, i, u, v).iter().step_by(self.sw);
                    for (d, &s) in row.iter_mut().zip(src) {
                        *d += wt * s;
                    }
                }
            }
        }
    }

    /// `dwk[u·kw + v] += Σ g · tap(u, v)` over the plane, row by row:
    /// strides other than 1.
    fn tap_dots_strided(&self, xpad: &[f32], g: &[f32], dwk: &mut [f32]) {
        for u in 0..self.kh {
            for v in 0..self.kw {
                let mut acc = 0.0f32;
                for (i, grow) in g.chunks_exact(self.ow).enumerate() {
                    let src = self.tap_row(xpad, i, u, v).iter().step_by(self.sw);
                    acc += grow.iter().zip(src).map(|(a, b)| a * b).sum::<f32>();
                }
                dwk[u * self.kw + v] += acc;
            }
        }
    }

    /// `dpad += convᵀ(g)` through the taps `wk` of one channel, for strides
    /// other than 1.
    fn spread_strided(&self, g: &[f32], wk: &[f32], dpad: &mut [f32]) {
        let wp = self.padded().1;
        for u in 0..self.kh {
            for v in 0..self.kw {
                let wt = wk[u * self.kw + v];
                for (i, grow) in g.chunks_exact(self.ow).enumerate() {
                    let at = (i * self.sh + u * self.dh) * wp + v * self.dw;
                    for (dv, &gv) in dpad[at..].iter_mut().step_by(self.sw).zip(grow) {
                        *dv += wt * gv;
                    }
                }
            }
        }
    }

    /// Depthwise `dW[c, u, v] = Σ_samples Σ_positions dy · tap`, one partial
    /// sum per thread over its samples.
    #[allow(clippy::too_many_arguments)]
    fn depthwise_weight_grad(
        &self,
        par: Par,
        x: &[f32],
        dy: &[f32],
        n: usize,
        pad: f32,
        scratch: &mut [Scratch],
        dw: &mut [f32],
    ) {
        let (hw, p, kk) = (self.h * self.w, self.p(), self.kk());
        let (hp, wp) = self.padded();
        let wl = self.c * kk;
        let used = par.ranges_with(n, dy.len() * kk, scratch, |range, sc| {
            let part = ensure(&mut sc.part, wl);
            part.fill(0.0);
            let xpad = ensure(&mut sc.plane, hp * wp);
            let wide = ensure(&mut sc.tmp, self.wide_span());
            for s in range {
                for c in 0..self.c {
                    let plane = s * self.c + c;
                    self.pad_into(&x[plane * hw..][..hw], pad, xpad);
                    let g = &dy[plane * p..][..p];
                    let dwk = &mut part[c * kk..][..kk];
                    if self.unit_stride() {
                        self.widen(g, wide);
                        for (t, d) in dwk.iter_mut().enumerate() {
                            let src = &xpad[self.tap_offset(t)..][..wide.len()];
                            *d += wide.iter().zip(src).map(|(a, b)| a * b).sum::<f32>();
                        }
                    } else {
                        self.tap_dots_strided(xpad, g, dwk);
                    }
                }
            }
        });
        sum_parts(&scratch[..used], dw);
    }
}

/// `dw` = the sum of the threads' partial weight gradients, in thread order.
fn sum_parts(parts: &[Scratch], dw: &mut [f32]) {
    let wl = dw.len();
    dw.copy_from_slice(&parts[0].part[..wl]);
    for sc in &parts[1..] {
        for (d, &v) in dw.iter_mut().zip(&sc.part[..wl]) {
            *d += v;
        }
    }
}
