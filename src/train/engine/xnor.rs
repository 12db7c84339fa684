//! The forward dot products of `bdense` as XNOR-popcount.
//!
//! Inputs and weights are both ±1, so each dot product is
//! `K − 2·popcount(a XOR w)` over their sign bits (bit 1 for −1, the IR's
//! convention), 64 products per word: about 60× less arithmetic than the
//! f32 GEMM, and the same exact integers the interpreter computes. The
//! weights are packed once per run (rows of `⌈K/64⌉` words, unused high bits
//! zero in both operands so they cancel in the XOR), by the Cranelift-compiled
//! kernel of [`super::packer`] where the JIT is available; each thread packs its
//! run of input rows and then sweeps all output channels for each row, so a
//! row's words stay in registers. The `popcnt` instruction is used where the
//! CPU has it (checked at run time), else `count_ones`' portable sequence.

use super::packer::Packer;
use super::par::Par;
use crate::codegen::kernels::wide::standalone::{PackedRows, XorPopcount};

/// 64-bit words per packed row of `k` values.
pub(super) fn words(k: usize) -> usize {
    k.div_ceil(64)
}

/// Packs rows of `k` ±1.0 values (`src`, row-major) into `dst`, `words(k)`
/// words per row: bit `j % 64` of word `j / 64` is set where value `j` is
/// negative.
pub(super) fn pack_rows(src: &[f32], k: usize, dst: &mut [u64]) {
    let wpr = words(k);
    for (row, out) in src
        .chunks_exact(k.max(1))
        .zip(dst.chunks_exact_mut(wpr.max(1)))
    {
        for (w, chunk) in out.iter_mut().zip(row.chunks(64)) {
            let mut bits = 0u64;
            for (b, &v) in chunk.iter().enumerate() {
                bits |= u64::from(v < 0.0) << b;
            }
            *w = bits;
        }
    }
}

/// Packs with the compiled kernel where there is one for `k`, else
/// [`pack_rows`]: the same bits either way.
pub(super) fn pack(packer: Option<&Packer>, src: &[f32], k: usize, dst: &mut [u64]) {
    if !packer.is_some_and(|p| p.pack(src, k, dst)) {
        pack_rows(src, k, dst);
    }
}

/// The 512-bit kernel of a `bdense` layer and its weights laid out for it.
pub(super) type Wide<'a> = (&'a XorPopcount, &'a PackedRows);

/// `y[n, o] = K − 2·popcount(x_n XOR w_o)` for packed weights `w` (`out`
/// rows) and ±1.0 inputs `x` (`[N, K]`); `scratch` holds the packed inputs.
/// With `wide`, the dot products run on the inference compiler's 512-bit
/// kernel, else on scalar `popcnt`: the same integers.
#[allow(clippy::too_many_arguments)]
pub(super) fn dense_forward(
    par: Par,
    packer: Option<&Packer>,
    wide: Option<Wide>,
    x: &[f32],
    w: &[u64],
    k: usize,
    out: usize,
    scratch: &mut [Vec<u64>],
    y: &mut [f32],
) {
    let wpr = words(k);
    // Roughly the work in element operations: one word op per 64 MACs,
    // plus packing the input.
    let work = y.len() * wpr * 4 + x.len();
    par.rows_with(y, out, work, scratch, |r0, ys, packed| {
        let rows = ys.len() / out.max(1);
        if packed.len() < rows * wpr {
            packed.resize(rows * wpr, 0);
        }
        pack(
            packer,
            &x[r0 * k..][..rows * k],
            k,
            &mut packed[..rows * wpr],
        );
        if let Some((kernel, bits)) = wide {
            // The kernel writes i32 dot products; they are converted to f32
            // in place (exact: |dot| ≤ K < 2^24).
            // SAFETY: i32 and f32 have the same size and alignment and
            // every bit pattern is valid for both; `ys` is not otherwise
            // used while `counts` lives.
            let counts =
                unsafe { std::slice::from_raw_parts_mut(ys.as_mut_ptr().cast::<i32>(), ys.len()) };
            if kernel.dots(&packed[..rows * wpr], bits, k, counts).is_ok() {
                for v in ys.iter_mut() {
                    *v = v.to_bits() as i32 as f32;
                }
                return;
            }
        }
        dots(&packed[..rows * wpr], w, k, out, ys);
    });
}

/// The dot products of packed rows `a` against packed rows `w`.
fn dots(a: &[u64], w: &[u64], k: usize, out: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU supports `popcnt`, the only feature the
            // function is compiled for.
            unsafe { dots_popcnt(a, w, k, out, y) };
            return;
        }
    }
    dots_portable(a, w, k, out, y);
}

/// [`dots`] compiled with the `popcnt` instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn dots_popcnt(a: &[u64], w: &[u64], k: usize, out: usize, y: &mut [f32]) {
    dots_portable(a, w, k, out, y);
}

/// [`dots`] in portable code; inlined into [`dots_popcnt`], where
/// `count_ones` becomes `popcnt`.
#[inline(always)]
fn dots_portable(a: &[u64], w: &[u64], k: usize, out: usize, y: &mut [f32]) {
    let wpr = words(k).max(1);
    for (row, yr) in a.chunks_exact(wpr).zip(y.chunks_exact_mut(out.max(1))) {
        for (wo, d) in w.chunks_exact(wpr).zip(yr.iter_mut()) {
            let mut ones = 0u32;
            for (&p, &q) in row.iter().zip(wo) {
                ones += (p ^ q).count_ones();
            }
            // Exact: |dot| <= K < 2^24 for any layer the verifier admits
            // here, and both conversions are of small integers.
            *d = k as f32 - 2.0 * ones as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xnor_dots_equal_the_f32_sums() {
        for (n, k, out) in [(3, 70, 4), (13, 256, 40), (1, 1, 1), (8, 784, 17)] {
            let x: Vec<f32> = (0..n * k)
                .map(|i| if (i * 7) % 3 == 0 { -1.0 } else { 1.0 })
                .collect();
            let w: Vec<f32> = (0..out * k)
                .map(|i| if (i * 5) % 4 == 1 { -1.0 } else { 1.0 })
                .collect();
            let mut wp = vec![0u64; out * words(k)];
            pack_rows(&w, k, &mut wp);
            let kernel = XorPopcount::available().then(|| XorPopcount::new(words(k), out).unwrap());
            let bits = kernel.as_ref().map(|kr| kr.pack(&wp).unwrap());
            let packer = Packer::new([k]);
            let paths = [
                (None, None),
                (packer.as_ref(), kernel.as_ref().zip(bits.as_ref())),
            ];
            for (packer, wide) in paths {
                for threads in [1, 2] {
                    let mut y = vec![0.0; n * out];
                    let mut scratch = vec![Vec::new(); 2];
                    let par = Par { threads };
                    dense_forward(par, packer, wide, &x, &wp, k, out, &mut scratch, &mut y);
                    for s in 0..n {
                        for o in 0..out {
                            let expected: f32 = (0..k).map(|j| x[s * k + j] * w[o * k + j]).sum();
                            assert_eq!(y[s * out + o], expected, "{n}x{k}x{out}");
                        }
                    }
                }
            }
        }
    }
}
