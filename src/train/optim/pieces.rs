//! How an update runs: a large parameter is cut into contiguous pieces, one
//! per thread, and each update loop is compiled for AVX-512 where the CPU has
//! it. Every update is elementwise, so neither changes a bit of the result.

use super::PARALLEL_THRESHOLD;

/// Contiguous ranges covering `0..n`, one per thread (one range for small `n`).
pub(super) fn ranges(n: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    if n == 0 {
        // One empty range, so that callers always run the update once.
        return std::iter::once(0..0).collect();
    }
    let t = if n > PARALLEL_THRESHOLD {
        threads.max(1)
    } else {
        1
    };
    let chunk = n.div_ceil(t);
    (0..n)
        .step_by(chunk)
        .map(|s| s..(s + chunk).min(n))
        .collect()
}

/// Splits `buf` at `ranges` (contiguous, from 0); an empty `buf` (unused
/// state) gives empty pieces.
pub(super) fn split<'a>(
    mut buf: &'a mut [f32],
    ranges: &[std::ops::Range<usize>],
) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        if buf.is_empty() {
            out.push(&mut [][..]);
            continue;
        }
        let (head, tail) = buf.split_at_mut(r.len());
        out.push(head);
        buf = tail;
    }
    out
}

/// Runs `f(w, g, m, v)` over matching pieces of the buffers, on several
/// threads when the parameter is large.
pub(super) fn for_pieces(
    threads: usize,
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    f: impl Fn(&mut [f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) {
    let rs = ranges(w.len(), threads);
    if rs.len() <= 1 {
        f(w, g, m, v);
        return;
    }
    let ws = split(w, &rs);
    let ms = split(m, &rs);
    let vs = split(v, &rs);
    let f = &f;
    // On the current rayon pool (the caller's, or the global one): spawning
    // threads per parameter per step cost more than the update itself.
    rayon::scope(|scope| {
        for (((w, m), v), r) in ws.into_iter().zip(ms).zip(vs).zip(&rs) {
            let g = &g[r.clone()];
            scope.spawn(move |_| f(w, g, m, v));
        }
    });
}

/// Clips latent weights to [−1, 1] (BinaryConnect), keeping NaN as `clamp`
/// does, in a form the compiler vectorises.
#[inline(always)]
pub(super) fn clip_latent(w: &mut [f32]) {
    for w in w {
        *w = if *w > 1.0 {
            1.0
        } else if *w < -1.0 {
            -1.0
        } else {
            *w
        };
    }
}

/// Runs `f` compiled for AVX-512 where the CPU has it. The update loops are
/// elementwise IEEE operations (no FMA contraction in Rust), so the wide
/// build computes the same bits as the baseline one, 16 lanes at a time.
#[inline(always)]
pub(super) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { avx512(f) };
        }
    }
    f()
}
