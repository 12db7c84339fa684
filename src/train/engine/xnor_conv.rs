//! The forward pass of `bconv2d` as XNOR-popcount on the inference
//! compiler's 512-bit kernel.
//!
//! The im2col + f32 GEMM of [`super::conv`] spends 32 f32 MACs per cycle at
//! best on ±1 values; the binary micro-kernel the code generator defines
//! with `define_function_bytes` ([`XorPopcount`], the same machine code a
//! compiled model's `bconv2d` runs) does 512 per instruction. Per block of
//! samples:
//! 1. **pixel words**: every input pixel's channel signs as `⌈C/64⌉` words
//!    (bit `c % 64` set where channel `c` is negative, high bits zero);
//! 2. **bit patches**: one row per output pixel, the pixel words of its
//!    `kh·kw` taps in `(u, v)` order, all-zero words for taps in the padding
//!    (bit 0 is +1: `pad_value=1`, which is why only that padding takes this
//!    path);
//! 3. **dots**: `K − 2·popcount(patch XOR w_o)` against the weights packed
//!    once per step in the same `(u, v, channel)` bit order, `K = C·kh·kw`;
//!    the zero high bits of both operands cancel in the XOR;
//! 4. the transposed copy into `y[s, o, p]` and the layer's epilogue.
//!
//! The dot products are exact integers, so the result equals the GEMM
//! path's (and the interpreter's) bit for bit whatever the summation order.
//! Grouped convolutions and `pad_value=0` (whose padded taps are zeros, not
//! ±1) stay on the GEMM path, as do machines without the kernel.

use crate::codegen::kernels::wide::standalone::{PackedRows, XorPopcount};

use super::conv::Conv;
use super::par::Par;

/// Target bits of patches per block of samples (about 256 KiB).
const BLOCK_WORDS: usize = 32 * 1024;

/// A `bconv2d` layer on the XOR-popcount kernel.
pub(super) struct XnorConv {
    conv: Conv,
    kernel: XorPopcount,
    /// Words per pixel, `⌈C/64⌉`.
    pixel_words: usize,
}

impl std::fmt::Debug for XnorConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XnorConv({:?})", self.kernel)
    }
}

/// Per-thread buffers.
#[derive(Debug, Default)]
pub(super) struct XnorScratch {
    pixels: Vec<u64>,
    patches: Vec<u64>,
    dots: Vec<i32>,
}

impl XnorConv {
    /// The layer on the kernel, or `None` where it takes the GEMM path
    /// (groups, zero padding, or no kernel on this machine).
    pub fn new(conv: Conv, pad_value_one: bool) -> Option<XnorConv> {
        if conv.groups != 1 || (!pad_value_one && conv.has_padding()) {
            return None;
        }
        if !XorPopcount::available() {
            return None;
        }
        let pixel_words = conv.c.div_ceil(64);
        let kernel = XorPopcount::new(conv.kh * conv.kw * pixel_words, conv.o).ok()?;
        Some(XnorConv {
            conv,
            kernel,
            pixel_words,
        })
    }

    /// Words per patch row.
    fn row_words(&self) -> usize {
        self.conv.kh * self.conv.kw * self.pixel_words
    }

    /// Packs `signs` (`[O, C, kh, kw]`, ±1.0) in the patches' bit order.
    pub fn pack_weights(&self, signs: &[f32]) -> Option<PackedRows> {
        let Conv { c, o, kh, kw, .. } = self.conv;
        let row = self.row_words();
        let mut bits = vec![0u64; o * row];
        for oc in 0..o {
            for ch in 0..c {
                for u in 0..kh {
                    for v in 0..kw {
                        let value = signs[((oc * c + ch) * kh + u) * kw + v];
                        let word = oc * row + (u * kw + v) * self.pixel_words + ch / 64;
                        bits[word] |= u64::from(value < 0.0) << (ch % 64);
                    }
                }
            }
        }
        self.kernel.pack(&bits).ok()
    }

    /// `y[s, o, p] = Σ x·sign(W)` for the ±1 input `x`, then `epilogue(o, row)`;
    /// false (with `y` unspecified) only if the kernel refuses its operands,
    /// which the sizes derived here rule out.
    pub fn forward(
        &self,
        par: Par,
        x: &[f32],
        weights: &PackedRows,
        scratch: &mut [XnorScratch],
        y: &mut [f32],
        epilogue: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) -> bool {
        let cv = &self.conv;
        let (il, p) = (cv.c * cv.h * cv.w, cv.oh * cv.ow);
        let ol = cv.o * p;
        let row = self.row_words();
        let block = (BLOCK_WORDS / (p * row).max(1)).max(1);
        let k_bits = cv.c * cv.kh * cv.kw;
        let refused = std::sync::atomic::AtomicBool::new(false);
        par.rows_with(y, ol, y.len() * row, scratch, |s0, ys, sc| {
            let n = ys.len().checked_div(ol).unwrap_or(0);
            let mut s = 0;
            while s < n {
                let b = block.min(n - s);
                self.patches(&x[(s0 + s) * il..][..b * il], b, sc);
                sc.dots.resize(b * p * cv.o, 0);
                if self
                    .kernel
                    .dots(&sc.patches, weights, k_bits, &mut sc.dots)
                    .is_err()
                {
                    refused.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                for sl in 0..b {
                    for o in 0..cv.o {
                        let dst = &mut ys[(s + sl) * ol + o * p..][..p];
                        for (i, d) in dst.iter_mut().enumerate() {
                            // Exact: |dot| ≤ K < 2^24.
                            *d = sc.dots[(sl * p + i) * cv.o + o] as f32;
                        }
                        epilogue(o, dst);
                    }
                }
                s += b;
            }
        });
        !refused.into_inner()
    }

    /// The bit patches of `samples` samples of `x` into `sc.patches`.
    fn patches(&self, x: &[f32], samples: usize, sc: &mut XnorScratch) {
        let cv = &self.conv;
        let (hw, pw, row) = (cv.h * cv.w, self.pixel_words, self.row_words());
        sc.pixels.clear();
        sc.pixels.resize(hw * pw, 0);
        sc.patches.clear();
        sc.patches.resize(samples * cv.oh * cv.ow * row, 0);
        for s in 0..samples {
            sc.pixels.fill(0);
            for ch in 0..cv.c {
                let plane = &x[(s * cv.c + ch) * hw..][..hw];
                let (word, bit) = (ch / 64, ch % 64);
                for (px, &value) in plane.iter().enumerate() {
                    sc.pixels[px * pw + word] |= u64::from(value < 0.0) << bit;
                }
            }
            for oy in 0..cv.oh {
                for ox in 0..cv.ow {
                    let out = ((s * cv.oh + oy) * cv.ow + ox) * row;
                    for u in 0..cv.kh {
                        let iy = (oy * cv.sh + u * cv.dh).wrapping_sub(cv.ph);
                        if iy >= cv.h {
                            continue; // padding: words stay zero (+1)
                        }
                        for v in 0..cv.kw {
                            let ix = (ox * cv.sw + v * cv.dw).wrapping_sub(cv.pw);
                            if ix >= cv.w {
                                continue;
                            }
                            let src = (iy * cv.w + ix) * pw;
                            let dst = out + (u * cv.kw + v) * pw;
                            sc.patches[dst..dst + pw].copy_from_slice(&sc.pixels[src..src + pw]);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv::Scratch;
    use super::*;
    use crate::ir::ops::ConvGeometry;

    /// The XNOR path against the im2col + GEMM path on ±1 data: equal bit
    /// for bit (both are exact integer sums).
    #[test]
    fn equals_the_gemm_path() {
        if !XorPopcount::available() {
            return;
        }
        let mut seed = 7u64;
        let mut sign = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if seed >> 63 == 1 { -1.0f32 } else { 1.0 }
        };
        // (C, H, W, O, kernel, stride, pad, dilation, samples)
        let cases = [
            (32, 8, 8, 64, [3, 3], [1, 1], [1, 1], [1, 1], 5),
            (70, 7, 9, 17, [3, 2], [2, 1], [1, 0], [1, 2], 3),
            (3, 5, 5, 40, [1, 1], [1, 1], [0, 0], [1, 1], 2),
            (128, 6, 6, 16, [5, 5], [1, 1], [2, 2], [1, 1], 33),
        ];
        for (c, h, w, o, kernel, stride, pad, dilation, n) in cases {
            let g = ConvGeometry {
                out_channels: o,
                kernel,
                stride,
                pad,
                dilation,
                groups: 1,
            };
            let oh = (h + 2 * pad[0] - dilation[0] * (kernel[0] - 1) - 1) / stride[0] + 1;
            let ow = (w + 2 * pad[1] - dilation[1] * (kernel[1] - 1) - 1) / stride[1] + 1;
            let conv = Conv::new(&g, &[c, h, w], &[o, oh, ow]);
            let xnor = XnorConv::new(conv, true).expect("the kernel is available");
            let x: Vec<f32> = (0..n * c * h * w).map(|_| sign()).collect();
            let signs: Vec<f32> = (0..o * c * kernel[0] * kernel[1]).map(|_| sign()).collect();
            let bits = xnor.pack_weights(&signs).unwrap();
            for threads in [1, 2] {
                let par = Par { threads };
                let mut want = vec![0.0; n * o * oh * ow];
                let mut scratch: Vec<Scratch> = (0..2).map(|_| Scratch::default()).collect();
                conv.forward(par, &x, &signs, 1.0, &mut scratch, &mut want, &|_, _| {});
                let mut got = vec![f32::NAN; want.len()];
                let mut xs: Vec<XnorScratch> = (0..2).map(|_| XnorScratch::default()).collect();
                let shift = |ch: usize, v: &mut [f32]| v.iter_mut().for_each(|e| *e += ch as f32);
                assert!(xnor.forward(par, &x, &bits, &mut xs, &mut got, &shift));
                for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    let ch = (i / (oh * ow)) % o;
                    assert_eq!(a, b + ch as f32, "case C={c} H={h} O={o} at {i}");
                }
            }
        }
    }
}
