//! Bop, the binary optimizer (Helwegen et al. 2019; larq's `Bop`).

use super::pieces::{for_pieces, wide};
use super::{ParamSlot, ParamState};

/// Bop (larq `Bop`): `w ← sign(w)`; `m ← m + γ(g − m)`; `w ← −w` where `w·m > τ`.
pub(super) fn bop(
    slot: &mut ParamSlot,
    state: &mut ParamState,
    gamma: f32,
    tau: f32,
    threads: usize,
) {
    if state.m.is_empty() {
        state.m = vec![0.0; slot.value.len()];
    }
    for_pieces(
        threads,
        slot.value,
        slot.grad,
        &mut state.m,
        &mut [],
        |w, g, m, _| {
            wide(
                #[inline(always)]
                move || {
                    for ((w, &g), m) in w.iter_mut().zip(g).zip(m.iter_mut()) {
                        let wi = if *w < 0.0 { -1.0 } else { 1.0 };
                        *m += gamma * (g - *m);
                        *w = if wi * *m > tau { -wi } else { wi };
                    }
                },
            )
        },
    );
    state.step += 1;
}
