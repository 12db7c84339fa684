//! CP-NAS's kernel-level child-parent loss (Zhuo et al. 2020, §3.3): each
//! binarized kernel of the child is pulled towards the same-named real
//! kernel of its full-precision parent,
//!
//! ```text
//! L_H = λ · Σ_layers Σ_c MSE(H_c, Ĥ_c),   Ĥ_c = α_c·sign(W_c),   α_c = mean_k |W_ck|
//! ```
//!
//! over the output channels `c` of every latent binary weight `W` that has a
//! parent kernel `H` of its shape (`Ĥ` is the XNOR/PCNN reconstruction the
//! paper's "reconstructed binarized filter" names, whatever scale the layer
//! itself uses). The gradient reaches the latent weights through the
//! clipped straight-through estimator with α held constant, as every
//! binary weight's does (training.md §3):
//!
//! ```text
//! ∂L_H/∂W_ck = λ · (2/n) · (Ĥ_ck − H_ck) · α_c · 1[|W_ck| ≤ 1],   n = the kernel's size per channel
//! ```
//!
//! The term depends on parameters only, not on activations, so it is added
//! to the gradients the training step computed, like weight decay, rather
//! than written into the training graph. The parent's kernels are
//! constants of the child's step (the parent trains on its own loss).
//! The paper's second term, a centre loss on the last features, is not
//! implemented: its form is only partly published (ir-spec/search.md §7).

use std::collections::BTreeMap;

/// The parent's kernels and the loss weight λ.
#[derive(Clone, Debug, Default)]
pub struct KernelTargets {
    /// λ.
    pub weight: f32,
    /// The parent's real kernels, by parameter name.
    pub kernels: BTreeMap<String, Vec<f32>>,
}

/// Adds `λ·Σ_c MSE(H_c, α_c·sign(W_c))` over the `out_channels` rows of
/// `latent` to `grad` (its gradient, as the module doc gives it) and returns
/// the term.
///
/// `latent`, `target` and `grad` have one length, a multiple of
/// `out_channels`; the caller pairs them by name and shape.
pub fn add_kernel_loss(
    latent: &[f32],
    target: &[f32],
    out_channels: usize,
    weight: f32,
    grad: &mut [f32],
) -> f32 {
    debug_assert!(latent.len() == target.len() && latent.len() == grad.len());
    let n = latent.len() / out_channels.max(1);
    if n == 0 {
        return 0.0;
    }
    let mut loss = 0.0f64;
    for ((w, h), g) in latent
        .chunks_exact(n)
        .zip(target.chunks_exact(n))
        .zip(grad.chunks_exact_mut(n))
    {
        let alpha = w.iter().map(|v| v.abs()).sum::<f32>() / n as f32;
        let mut squares = 0.0f32;
        for ((&w, &h), g) in w.iter().zip(h).zip(g) {
            let diff = alpha * sign(w) - h;
            squares += diff * diff;
            if w.abs() <= 1.0 {
                *g += weight * 2.0 / n as f32 * diff * alpha;
            }
        }
        loss += f64::from(squares / n as f32);
    }
    weight * loss as f32
}

/// The binarization of the forward pass: `+1` for `w >= 0` (ops.md `sign`).
fn sign(w: f32) -> f32 {
    if w >= 0.0 { 1.0 } else { -1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_and_its_gradient_follow_the_definition() {
        // Two channels of two weights; channel 0: α = 0.5, channel 1: α = 1.5
        // with one weight past the clip.
        let w = [0.25, -0.75, 2.0, -1.0];
        let h = [0.5, 0.0, 1.0, -1.0];
        let mut g = [0.0; 4];
        let loss = add_kernel_loss(&w, &h, 2, 0.1, &mut g);
        // Ĥ = [0.5, −0.5, 1.5, −1.5]; diffs [0, −0.5, 0.5, −0.5].
        let mse = [(0.0 + 0.25) / 2.0, (0.25 + 0.25) / 2.0];
        assert!((loss - 0.1 * (mse[0] + mse[1])).abs() < 1e-7);
        let expect = [0.0, 0.1 * (-0.5) * 0.5, 0.0, 0.1 * (-0.5) * 1.5];
        for (a, b) in g.iter().zip(expect) {
            assert!((a - b).abs() < 1e-7, "{g:?}");
        }
    }
}
