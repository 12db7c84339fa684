//! What the same-run benchmarks share: the timing harness and the `gemm`
//! crate baselines.
//!
//! Every case is warmed up and calibrated to ~`sample_s` per sample, then
//! measured in rounds, each round running one sample of every case in
//! rotating order, so slow phases of a shared machine hit all cases alike.
//! Medians of per-call times, and ratios as medians of per-round ratios, are
//! what the benchmarks report.

#![allow(dead_code)] // each benchmark uses its own part

use std::time::Instant;

/// One benchmarked call.
pub struct Case<'a> {
    run: Box<dyn FnMut() + 'a>,
}

pub fn case<'a>(run: impl FnMut() + 'a) -> Case<'a> {
    Case { run: Box::new(run) }
}

/// Per case, the per-call seconds of every round. Each case is called at
/// least `min_warmup_calls` times while warming up (its first call aside).
pub fn measure(
    cases: &mut [Case],
    rounds: usize,
    sample_s: f64,
    warmup_s: f64,
    min_warmup_calls: u64,
) -> Vec<Vec<f64>> {
    let mut iters = Vec::with_capacity(cases.len());
    for c in cases.iter_mut() {
        (c.run)();
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed().as_secs_f64() < warmup_s || n < min_warmup_calls {
            (c.run)();
            n += 1;
        }
        let per = t0.elapsed().as_secs_f64() / n as f64;
        iters.push(((sample_s / per).ceil() as u64).max(1));
    }
    let mut out = vec![Vec::with_capacity(rounds); cases.len()];
    for r in 0..rounds {
        for j in 0..cases.len() {
            let i = (j + r) % cases.len();
            let t0 = Instant::now();
            for _ in 0..iters[i] {
                (cases[i].run)();
            }
            out[i].push(t0.elapsed().as_secs_f64() / iters[i] as f64);
        }
    }
    out
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// The median of the per-round ratios `num[r] / den[r]`.
pub fn median_ratio(num: &[f64], den: &[f64]) -> f64 {
    let r: Vec<f64> = num.iter().zip(den).map(|(a, b)| a / b).collect();
    median(&r)
}

/// `gemm` crate, NHWC orientation (channels-last output, as the yardstick):
/// `C (n×m) = B (n×k) · Aᵀ`, `A` being `m×k`.
pub fn gemm_nhwc(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= n * m);
    // SAFETY: the asserts above: the slices hold m×k, n×k and n×m elements
    // with the strides given.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            c.as_mut_ptr(),
            1,
            m as isize,
            false,
            b.as_ptr(),
            1,
            k as isize,
            a.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `gemm` crate, NCHW orientation (channels-first output):
/// `C (m×n) = A (m×k) · Bᵀ`, `Bᵀ` being `k×n`.
pub fn gemm_nchw(m: usize, n: usize, k: usize, a: &[f32], bt: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && bt.len() >= k * n && c.len() >= m * n);
    // SAFETY: the asserts above: the slices hold m×k, k×n and m×n elements
    // with the strides given.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            bt.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
