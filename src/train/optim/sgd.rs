//! SGD with momentum (PyTorch's `SGD`, dampening 0, optionally Nesterov).

use super::pieces::{clip_latent, for_pieces, wide};
use super::{ParamSlot, ParamState};

/// PyTorch `SGD` (dampening 0): `g += wd·w`; with momentum μ, `b ← g` on the
/// first step and `b ← μb + g` after, then `g ← g + μb` (Nesterov) or `g ← b`;
/// `w ← w − lr·g`.
#[allow(clippy::too_many_arguments)]
pub(super) fn sgd(
    slot: &mut ParamSlot,
    state: &mut ParamState,
    lr: f32,
    momentum: f32,
    nesterov: bool,
    wd: f32,
    clip: bool,
    threads: usize,
) {
    let first = state.m.is_empty();
    if momentum != 0.0 && first {
        state.m = vec![0.0; slot.value.len()];
    }
    for_pieces(
        threads,
        slot.value,
        slot.grad,
        &mut state.m,
        &mut [],
        |w, g, b, _| {
            wide(
                #[inline(always)]
                move || {
                    if momentum == 0.0 {
                        for (w, &g) in w.iter_mut().zip(g) {
                            *w -= lr * (g + wd * *w);
                        }
                    } else {
                        for ((w, &g), b) in w.iter_mut().zip(g).zip(b.iter_mut()) {
                            let mut gi = g + wd * *w;
                            *b = if first { gi } else { momentum * *b + gi };
                            gi = if nesterov { gi + momentum * *b } else { *b };
                            *w -= lr * gi;
                        }
                    }
                    if clip {
                        clip_latent(w);
                    }
                },
            )
        },
    );
}
