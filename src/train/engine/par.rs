//! Splitting one op's work over the engine's threads.
//!
//! Every parallel op cuts its output into `threads` contiguous runs of whole
//! rows (samples, planes or output channels) and runs one closure per run on
//! the engine's rayon pool; the cut depends only on the sizes and the thread
//! count, never on scheduling, so results are deterministic. Ops too small
//! to repay the hand-over (about a microsecond per task) run inline.

use rayon::prelude::*;

/// Below this many elements of work an op runs on the calling thread.
const MIN_PARALLEL_WORK: usize = 64 * 1024;

/// The thread count of a run.
#[derive(Clone, Copy, Debug)]
pub(super) struct Par {
    /// Threads to split over (1: everything inline).
    pub threads: usize,
}

impl Par {
    /// How many pieces to cut `rows` rows of `work` total elements into.
    pub fn pieces(self, rows: usize, work: usize) -> usize {
        if self.threads <= 1 || rows < 2 || work < MIN_PARALLEL_WORK {
            1
        } else {
            self.threads.min(rows)
        }
    }

    /// Calls `f(first_row, rows_slice)` on contiguous runs of the `rows`
    /// rows (each `row_len` long) of `dst`, in parallel when worth it.
    /// `work` estimates the total cost in element operations.
    pub fn rows<F>(self, dst: &mut [f32], row_len: usize, work: usize, f: F)
    where
        F: Fn(usize, &mut [f32]) + Sync + Send,
    {
        let rows = dst.len().checked_div(row_len).unwrap_or(0);
        let pieces = self.pieces(rows, work);
        if pieces <= 1 || row_len == 0 {
            f(0, dst);
            return;
        }
        let per = rows.div_ceil(pieces);
        dst.par_chunks_mut(per * row_len)
            .enumerate()
            .for_each(|(i, chunk)| f(i * per, chunk));
    }

    /// As [`Par::rows`], with one scratch value per piece (`scratch` holds
    /// at least `threads` of them).
    pub fn rows_with<S, F>(
        self,
        dst: &mut [f32],
        row_len: usize,
        work: usize,
        scratch: &mut [S],
        f: F,
    ) where
        S: Send,
        F: Fn(usize, &mut [f32], &mut S) + Sync + Send,
    {
        let rows = dst.len().checked_div(row_len).unwrap_or(0);
        let pieces = self.pieces(rows, work).min(scratch.len());
        if pieces <= 1 || row_len == 0 {
            f(0, dst, &mut scratch[0]);
            return;
        }
        let per = rows.div_ceil(pieces);
        dst.par_chunks_mut(per * row_len)
            .zip(scratch.par_iter_mut())
            .enumerate()
            .for_each(|(i, (chunk, s))| f(i * per, chunk, s));
    }

    /// Calls `f(range, scratch)` on contiguous ranges covering `0..rows`,
    /// one scratch value each; returns how many ranges were used (the
    /// first ones of `scratch`).
    pub fn ranges_with<S, F>(self, rows: usize, work: usize, scratch: &mut [S], f: F) -> usize
    where
        S: Send,
        F: Fn(std::ops::Range<usize>, &mut S) + Sync + Send,
    {
        let pieces = self.pieces(rows, work).min(scratch.len()).max(1);
        if pieces == 1 {
            f(0..rows, &mut scratch[0]);
            return 1;
        }
        let per = rows.div_ceil(pieces);
        scratch[..pieces]
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, s)| f((i * per).min(rows)..((i + 1) * per).min(rows), s));
        pieces
    }

    /// `f(i)` for every `i < n`, collected in order (parallel when worth it).
    pub fn map<T, F>(self, n: usize, work: usize, f: F) -> Vec<T>
    where
        T: Send,
        F: Fn(usize) -> T + Sync + Send,
    {
        if self.pieces(n, work) <= 1 {
            (0..n).map(f).collect()
        } else {
            (0..n).into_par_iter().map(f).collect()
        }
    }
}
