//! Adam and AdamW (PyTorch's `Adam` with L2 weight decay, and `AdamW` with
//! decoupled decay).

use super::pieces::{clip_latent, for_pieces, wide};
use super::{ParamSlot, ParamState};

/// Adam's coefficients for one step.
#[derive(Clone, Copy)]
pub(super) struct AdamStep {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    wd: f32,
    decoupled: bool,
    /// `lr / (1 − beta1^t)`.
    step_size: f32,
    /// `sqrt(1 − beta2^t)`.
    bc2_sqrt: f32,
}

impl AdamStep {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        wd: f32,
        decoupled: bool,
        t: u64,
    ) -> AdamStep {
        // In f64, as PyTorch computes the bias corrections in Python floats.
        let t = t.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - (beta1 as f64).powi(t);
        let bc2 = 1.0 - (beta2 as f64).powi(t);
        AdamStep {
            lr,
            beta1,
            beta2,
            eps,
            wd,
            decoupled,
            step_size: (lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
        }
    }
}

/// PyTorch `Adam` / `AdamW` (`torch/optim/adam.py`, single-tensor path):
/// `g += wd·w` (L2) or `w *= 1 − lr·wd` (decoupled); `m ← β₁m + (1−β₁)g`;
/// `v ← β₂v + (1−β₂)g²`; `w ← w − (lr/(1−β₁ᵗ)) · m / (√v/√(1−β₂ᵗ) + ε)`.
pub(super) fn adam(
    slot: &mut ParamSlot,
    state: &mut ParamState,
    h: &AdamStep,
    clip: bool,
    threads: usize,
) {
    let n = slot.value.len();
    if state.m.is_empty() {
        state.m = vec![0.0; n];
        state.v = vec![0.0; n];
    }
    for_pieces(
        threads,
        slot.value,
        slot.grad,
        &mut state.m,
        &mut state.v,
        |w, g, m, v| {
            let (l2, decay) = match (h.wd != 0.0, h.decoupled) {
                (false, _) => (0.0, 1.0),
                (true, false) => (h.wd, 1.0),
                (true, true) => (0.0, 1.0 - h.lr * h.wd),
            };
            let decoupled = h.wd != 0.0 && h.decoupled;
            let coupled = h.wd != 0.0 && !h.decoupled;
            let h = *h;
            wide(
                #[inline(always)]
                move || {
                    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                    {
                        let mut gi = g;
                        if decoupled {
                            *w *= decay;
                        }
                        if coupled {
                            gi += l2 * *w;
                        }
                        *m = h.beta1 * *m + (1.0 - h.beta1) * gi;
                        *v = h.beta2 * *v + (1.0 - h.beta2) * gi * gi;
                        let denom = v.sqrt() / h.bc2_sqrt + h.eps;
                        *w -= h.step_size * *m / denom;
                    }
                    if clip {
                        clip_latent(w);
                    }
                },
            )
        },
    );
}
