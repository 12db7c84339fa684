//! f32 matrix products, and the dense layers built on them.
//!
//! All products go through the `gemm` crate's AVX-512 kernels (about 90% of
//! the f32 peak on this machine for large shapes), called single-threaded
//! on one contiguous block of output rows per thread: splitting the output,
//! never the reduction, keeps every sum in one thread and in a fixed order.
//!
//! Dense layers, `x` `[N, K]`, `W` `[O, K]`, `dy` `[N, O]`:
//! - forward `y = x·Wᵀ` (split over samples);
//! - `dx = dy·W` (split over samples);
//! - `dW = dyᵀ·x`, the sum over the batch as the product's reduction (split
//!   over output channels).
//!
//! Binary layers use the same products with `sign(W)` (prepared once per
//! run). Their forward sums of ±1 products are exact integers in f32 (fewer
//! than 2^24 terms), so they equal the interpreter's bit for bit whatever
//! the order, and the XNOR scale is applied afterwards as the interpreter
//! does; the backward products take `α_o·sign(W_o)` directly.

use super::par::Par;

/// A read-only matrix operand: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `[rows, cols]` matrix with row stride `ld`.
    pub fn rows(data: &'a [f32], ld: usize) -> Mat<'a> {
        Mat {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with row stride `ld`.
    pub fn cols(data: &'a [f32], ld: usize) -> Mat<'a> {
        Mat {
            data,
            rs: 1,
            cs: ld,
        }
    }

    /// Whether an `m × n` view fits in `data`.
    fn fits(&self, m: usize, n: usize) -> bool {
        m == 0 || n == 0 || (m - 1) * self.rs + (n - 1) * self.cs < self.data.len()
    }
}

/// `dst[m × n]` (row-major, row stride `ldd`) `= a·b`, or `+= a·b` with
/// `accumulate`; `a` is `m × k`, `b` is `k × n`.
///
/// # Panics
/// If a view does not fit its slice: the callers derive every size from the
/// plan, so that would be a bug in the engine, and checking keeps the
/// unsafe call below sound.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    ldd: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        m == 0 || (m - 1) * ldd + n <= dst.len(),
        "gemm: dst too small"
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * ldd..][..n].fill(0.0);
            }
        }
        return;
    }
    assert!(a.fits(m, k) && b.fits(k, n), "gemm: operand too small");
    // SAFETY: the asserts above keep every element the product reads or
    // writes inside the slices; `dst` is borrowed mutably, so it overlaps
    // neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Dense forward `y[N, O] = x[N, K]·W[O, K]ᵀ`, split over samples.
pub(super) fn dense_forward(par: Par, x: &[f32], w: &[f32], k: usize, out: usize, y: &mut [f32]) {
    par.rows(y, out, y.len() * k, |r0, ys| {
        let rows = ys.len() / out.max(1);
        matmul(
            rows,
            out,
            k,
            ys,
            out,
            false,
            Mat::rows(&x[r0 * k..], k),
            Mat::cols(w, k),
        );
    });
}

/// `dx[N, K] = dy[N, O]·W[O, K]`, split over samples.
pub(super) fn dense_input_grad(
    par: Par,
    dy: &[f32],
    w: &[f32],
    k: usize,
    out: usize,
    dx: &mut [f32],
) {
    par.rows(dx, k, dx.len() * out, |r0, dxs| {
        let rows = dxs.len() / k.max(1);
        matmul(
            rows,
            k,
            out,
            dxs,
            k,
            false,
            Mat::rows(&dy[r0 * out..], out),
            Mat::rows(w, k),
        );
    });
}

/// `dW[O, K] = dy[N, O]ᵀ·x[N, K]`, split over output channels.
pub(super) fn dense_weight_grad(
    par: Par,
    dy: &[f32],
    x: &[f32],
    n: usize,
    k: usize,
    out: usize,
    dw: &mut [f32],
) {
    par.rows(dw, k, dw.len() * n, |o0, dws| {
        let rows = dws.len() / k.max(1);
        matmul(
            rows,
            k,
            n,
            dws,
            k,
            false,
            Mat::cols(&dy[o0..], out),
            Mat::rows(x, k),
        );
    });
}
