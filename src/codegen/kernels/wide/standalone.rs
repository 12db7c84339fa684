//! The binary micro-kernel outside compiled models: XOR-popcount sums of
//! packed rows with runtime pointers, for the training engine and other
//! callers that hold bits in plain row-major arrays.
//!
//! ```
//! use onebit::codegen::kernels::wide::standalone::XorPopcount;
//! if XorPopcount::available() {
//!     // A: 5 rows, W: 20 rows, of 3 words (192 bits) each.
//!     let (m, n, words) = (5usize, 20usize, 3usize);
//!     let bits = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
//!     let a: Vec<u64> = (0..m * words).map(bits).collect();
//!     let w: Vec<u64> = (0..n * words).map(|i| bits(i + 1000)).collect();
//!     let kernel = XorPopcount::new(words, n)?;
//!     let packed = kernel.pack(&w)?;
//!     let mut dots = vec![0i32; m * n];
//!     kernel.dots(&a, &packed, 64 * words, &mut dots)?;
//!     // Row 0 of A against row 1 of W.
//!     let popcount: u32 = (0..words).map(|t| (a[t] ^ w[words + t]).count_ones()).sum();
//!     assert_eq!(dots[1], 64 * words as i32 - 2 * popcount as i32);
//! }
//! # Ok::<(), onebit::CodegenError>(())
//! ```
//!
//! The kernel is the one compiled models call ([`super::bconv`]), assembled
//! for `words` 64-bit words per row (`2·words` 32-bit steps, offset `4t`)
//! and `n` rows of W (16-row blocks, 4 at a time, the last tile narrower),
//! with a tile of 6 rows of A; `popcounts` walks A in tiles of 6 rows. It
//! lives in its own executable memory (a `JITModule`), freed on drop.

use std::sync::Mutex;

use cranelift_jit::JITModule;

use super::bconv::{self, Out, Spec};
use super::{Isa, Tile};
use crate::codegen::{CodegenError, target};

/// `kernel(bases, weights, steps, out, epi)`, see [`super::bconv`].
type KernelFn =
    unsafe extern "sysv64" fn(*const *const u64, *const u8, *const i32, *mut i32, usize);

/// One 64-byte line of packed weights.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// W re-laid for the kernel (from [`XorPopcount::pack`]).
pub struct PackedRows {
    lines: Vec<Line>,
    n: usize,
    words: usize,
}

impl std::fmt::Debug for PackedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedRows({} rows × {} words)", self.n, self.words)
    }
}

/// A 512-bit XOR-popcount kernel for rows of `words` u64 against `n` rows.
pub struct XorPopcount {
    f: KernelFn,
    spec: Spec,
    words: usize,
    n: usize,
    offsets: Vec<i32>,
    module: Mutex<Option<JITModule>>,
}

impl std::fmt::Debug for XorPopcount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XorPopcount({} words × {} rows)", self.words, self.n)
    }
}

fn bad(message: String) -> CodegenError {
    CodegenError::Param {
        name: "xor-popcount operands".into(),
        message,
    }
}

impl XorPopcount {
    /// Whether this machine runs the kernel (the `avx512` kernel path).
    pub fn available() -> bool {
        target::HostFeatures::detect().avx512_bnn
    }

    /// Assembles the kernel for rows of `words` 64-bit words and `n` rows
    /// of W. Fails where [`XorPopcount::available`] is false.
    pub fn new(words: usize, n: usize) -> Result<XorPopcount, CodegenError> {
        if !XorPopcount::available() {
            return Err(CodegenError::Target(
                "the xor-popcount kernel needs x86-64 (System V) with AVX512F, BW, VL and \
                 VPOPCNTDQ"
                    .into(),
            ));
        }
        if words == 0 || n == 0 {
            return Err(bad(format!(
                "{words} words × {n} rows: both must be positive"
            )));
        }
        let blocks = n.div_ceil(16);
        let spec = Spec {
            tile: Tile::choose(Isa::Avx512, blocks, usize::MAX),
            blocks,
            steps: 2 * words,
            out: Out::Counts {
                pixel_stride: i32::try_from(64 * blocks)
                    .map_err(|_| bad(format!("{n} rows are too many")))?,
            },
        };
        let code = bconv::assemble(&spec)?;
        let (module, ptrs) = super::executable("xor_popcount", &[(&code, 5)])?;
        let p = ptrs[0];
        // SAFETY: `p` is the finalized code of `bconv::assemble`, a leaf in
        // the System V convention with the signature of `KernelFn`; the
        // module that owns the memory lives in `self` and is freed on drop.
        let f = unsafe { std::mem::transmute::<*const u8, KernelFn>(p) };
        Ok(XorPopcount {
            f,
            spec,
            words,
            n,
            offsets: (0..2 * words).map(|t| 4 * t as i32).collect(),
            module: Mutex::new(Some(module)),
        })
    }

    /// Re-lays W (`n` rows × `words` u64, row-major) for the kernel. Pack
    /// once, use for many A.
    pub fn pack(&self, w: &[u64]) -> Result<PackedRows, CodegenError> {
        if w.len() != self.n * self.words {
            return Err(bad(format!(
                "W has {} words, expected {} rows × {} words",
                w.len(),
                self.n,
                self.words
            )));
        }
        let (blocks, steps) = (self.spec.blocks, self.spec.steps);
        // The vector layout `[block][step][16 lanes]` of u32, then per tile.
        let mut lines = Vec::with_capacity(blocks * steps * 64);
        for blk in 0..blocks {
            for t in 0..steps {
                for lane in 0..16 {
                    let row = blk * 16 + lane;
                    let x = if row < self.n {
                        (w[row * self.words + t / 2] >> (32 * (t % 2))) as u32
                    } else {
                        0
                    };
                    lines.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        let tiled = bconv::tile_weights(&lines, 1, &self.spec);
        let lines = tiled
            .chunks_exact(64)
            .map(|c| {
                let mut l = Line([0; 64]);
                l.0.copy_from_slice(c);
                l
            })
            .collect();
        Ok(PackedRows {
            lines,
            n: self.n,
            words: self.words,
        })
    }

    /// `out[i·n + j] = Σ_t popcount(a[i·words + t] XOR w[j·words + t])` for
    /// the `m = a.len() / words` rows of A.
    pub fn popcounts(
        &self,
        a: &[u64],
        w: &PackedRows,
        out: &mut [i32],
    ) -> Result<(), CodegenError> {
        if w.n != self.n || w.words != self.words {
            return Err(bad(format!("{w:?} was not packed for {self:?}")));
        }
        if !a.len().is_multiple_of(self.words) {
            return Err(bad(format!(
                "A has {} words, not a multiple of {} words per row",
                a.len(),
                self.words
            )));
        }
        let m = a.len() / self.words;
        if out.len() != m * self.n {
            return Err(bad(format!(
                "out has {} values, expected {m} × {}",
                out.len(),
                self.n
            )));
        }
        let nr = self.spec.tile.nr;
        let npad = 16 * self.spec.blocks;
        let mut tile = vec![0i32; nr * npad];
        for i0 in (0..m).step_by(nr) {
            let rows = (m - i0).min(nr);
            // Past the last row, repeat it (read, never written back).
            let bases: Vec<*const u64> = (0..nr)
                .map(|k| a[(i0 + k.min(rows - 1)) * self.words..].as_ptr())
                .collect();
            // SAFETY: every base points at a row of `words` u64 of `a`, of
            // which the kernel reads the 4-byte chunks at `offsets` (< 8 ·
            // words); `w.lines` holds `blocks · steps` lines in the tile
            // layout of `self.spec`; `tile` holds `nr` rows of `npad` i32,
            // the kernel's `pixel_stride` of 64 · blocks bytes.
            unsafe {
                (self.f)(
                    bases.as_ptr(),
                    w.lines.as_ptr().cast(),
                    self.offsets.as_ptr(),
                    tile.as_mut_ptr(),
                    0,
                );
            }
            for k in 0..rows {
                out[(i0 + k) * self.n..][..self.n].copy_from_slice(&tile[k * npad..][..self.n]);
            }
        }
        Ok(())
    }

    /// `out[i·n + j] = k_bits − 2·popcount(a_i XOR w_j)`: the ±1 dot
    /// products of rows whose `k_bits` valid bits are followed by zeros.
    pub fn dots(
        &self,
        a: &[u64],
        w: &PackedRows,
        k_bits: usize,
        out: &mut [i32],
    ) -> Result<(), CodegenError> {
        if k_bits > 64 * self.words {
            return Err(bad(format!(
                "{k_bits} bits do not fit {} words",
                self.words
            )));
        }
        self.popcounts(a, w, out)?;
        let k = k_bits as i32;
        out.iter_mut().for_each(|c| *c = k - 2 * *c);
        Ok(())
    }
}

impl Drop for XorPopcount {
    fn drop(&mut self) {
        if let Ok(mut m) = self.module.lock()
            && let Some(m) = m.take()
        {
            // SAFETY: `self.f` is private to `self`, which is being dropped.
            unsafe { m.free_memory() };
        }
    }
}
