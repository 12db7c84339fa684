//! Convolutions as im2col + GEMM, forward and both backward products.
//!
//! The batch is cut into one contiguous run of samples per thread; each
//! thread walks its run in blocks of `S` samples, `S` chosen so that the
//! patch matrix `cols[C·kh·kw, S·P]` (`P = OH·OW`, column `s·P + p`) stays
//! around 1 MiB, in cache. Per block and group `g`:
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

use super::gemm::{Mat, matmul};
use super::par::Par;
use crate::ir::ops::ConvGeometry;

/// Target size of one patch block, in f32 elements (1 MiB).
const BLOCK_ELEMENTS: usize = 256 * 1024;

/// Per-thread buffers of the convolution kernels, grown on first use.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// Patches `[C·kh·kw, S·P]`.
    pub cols: Vec<f32>,
    /// Outputs or gradients `[O, S·P]`.
    pub tmp: Vec<f32>,
    /// A partial weight gradient.
    pub part: Vec<f32>,
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
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    dh: usize,
    dw: usize,
    oh: usize,
    ow: usize,
    groups: usize,
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

    /// For kernel offset `v` (column) and output column `j`: the input
    /// column, if inside. Returns the output columns `[j0, j1)` whose input
    /// column is inside.
    fn valid_cols(&self, v: usize) -> (usize, usize) {
        let off = v * self.dw;
        // x = j·sw + off − pw must be in [0, w).
        let j0 = if off >= self.pw {
            0
        } else {
            (self.pw - off).div_ceil(self.sw)
        };
        let j1 = if self.w + self.pw > off {
            (self.w + self.pw - off).div_ceil(self.sw).min(self.ow)
        } else {
            0
        };
        (j0.min(j1), j1)
    }

    /// `cols[r, s·P + i·OW + j] = xpad[s, c, i·sh + u·dh, j·sw + v·dw]`, with
    /// `r = (c·kh + u)·kw + v`, for the `samples` samples of `x`.
    fn im2col(&self, x: &[f32], samples: usize, pad: f32, cols: &mut [f32]) {
        let (p, ld) = (self.p(), samples * self.p());
        for c in 0..self.c {
            for u in 0..self.kh {
                for v in 0..self.kw {
                    let r = (c * self.kh + u) * self.kw + v;
                    let (j0, j1) = self.valid_cols(v);
                    let row = &mut cols[r * ld..][..ld];
                    for s in 0..samples {
                        let plane = &x[(s * self.c + c) * self.h * self.w..][..self.h * self.w];
                        for i in 0..self.oh {
                            let dst = &mut row[s * p + i * self.ow..][..self.ow];
                            let y = (i * self.sh + u * self.dh) as isize - self.ph as isize;
                            if y < 0 || y >= self.h as isize {
                                dst.fill(pad);
                                continue;
                            }
                            let src = &plane[y as usize * self.w..][..self.w];
                            dst[..j0].fill(pad);
                            dst[j1..].fill(pad);
                            let x0 = j0 * self.sw + v * self.dw - self.pw;
                            if self.sw == 1 {
                                dst[j0..j1].copy_from_slice(&src[x0..x0 + (j1 - j0)]);
                            } else {
                                for (d, &sv) in dst[j0..j1]
                                    .iter_mut()
                                    .zip(src[x0..].iter().step_by(self.sw))
                                {
                                    *d = sv;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Conv::im2col`]: `dx` (zeroed here) gets every
    /// in-input entry of `cols` added back.
    fn col2im(&self, cols: &[f32], samples: usize, dx: &mut [f32]) {
        dx.fill(0.0);
        let (p, ld) = (self.p(), samples * self.p());
        for c in 0..self.c {
            for u in 0..self.kh {
                for v in 0..self.kw {
                    let r = (c * self.kh + u) * self.kw + v;
                    let (j0, j1) = self.valid_cols(v);
                    if j0 >= j1 {
                        continue;
                    }
                    let row = &cols[r * ld..][..ld];
                    for s in 0..samples {
                        let plane =
                            &mut dx[(s * self.c + c) * self.h * self.w..][..self.h * self.w];
                        for i in 0..self.oh {
                            let y = (i * self.sh + u * self.dh) as isize - self.ph as isize;
                            if y < 0 || y >= self.h as isize {
                                continue;
                            }
                            let src = &row[s * p + i * self.ow..][..self.ow];
                            let dst = &mut plane[y as usize * self.w..][..self.w];
                            let x0 = j0 * self.sw + v * self.dw - self.pw;
                            if self.sw == 1 {
                                for (d, &sv) in dst[x0..x0 + (j1 - j0)].iter_mut().zip(&src[j0..j1])
                                {
                                    *d += sv;
                                }
                            } else {
                                for (d, &sv) in
                                    dst[x0..].iter_mut().step_by(self.sw).zip(&src[j0..j1])
                                {
                                    *d += sv;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Forward: `y = conv(x, w)` with `pad_value` in the padding, then
    /// `epilogue(o, values)` on each output plane (bias or scale).
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
        let (il, ol, p) = (self.in_len(), self.out_len(), self.p());
        let work = y.len() * self.ckg();
        let (og, ckg) = (self.o / self.groups, self.ckg());
        par.rows_with(y, ol, work, scratch, |s0, ys, sc| {
            let n = ys.len().checked_div(ol).unwrap_or(0);
            let mut s = 0;
            while s < n {
                let b = self.block().min(n - s);
                let cols = ensure(&mut sc.cols, self.c * self.kk() * b * p);
                self.im2col(&x[(s0 + s) * il..][..b * il], b, pad, cols);
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
                self.col2im(cols, b, &mut dxs[s * il..][..b * il]);
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
                self.im2col(&x[s * il..][..b * il], b, pad, cols);
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
        dw.copy_from_slice(&scratch[0].part[..wl]);
        for sc in &scratch[1..used] {
            for (d, &v) in dw.iter_mut().zip(&sc.part[..wl]) {
                *d += v;
            }
        }
    }
}
