//! Tests of the optimizers against their update rules written out.

use super::pieces::ranges;
use super::*;

fn slot<'a>(
    name: &'a str,
    value: &'a mut [f32],
    grad: &'a [f32],
    kind: ParamKind,
) -> ParamSlot<'a> {
    ParamSlot {
        name,
        value,
        grad,
        kind,
    }
}

fn close(a: f32, b: f64) {
    assert!(
        (a as f64 - b).abs() <= 1e-6 * b.abs().max(1e-3),
        "{a} vs {b}"
    );
}

/// PyTorch's Adam written out in f64 for one scalar.
fn adam_reference(w0: f64, grads: &[f64], lr: f64, wd: f64, decoupled: bool) -> Vec<f64> {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let (mut w, mut m, mut v) = (w0, 0.0, 0.0);
    let mut out = Vec::new();
    for (t, &g0) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        let mut g = g0;
        if decoupled {
            w *= 1.0 - lr * wd;
        } else {
            g += wd * w;
        }
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        let mhat = m / (1.0 - b1.powi(t));
        let vhat = v / (1.0 - b2.powi(t));
        w -= lr * mhat / (vhat.sqrt() + eps);
        out.push(w);
    }
    out
}

#[test]
fn adam_first_steps_match_pytorch() {
    // Step 1: m̂ = g and v̂ = g², so w moves by lr·g/(|g| + ε) ≈ lr·sign(g).
    let mut o = Optimizer::new(OptimizerConfig::adam()).unwrap();
    let mut w = [0.5f32, -0.25, 0.0];
    let grads = [[0.1f32, -2.0, 0.0], [0.3, 1.0, 0.5], [-0.2, 0.5, 0.5]];
    o.step(&mut [slot("a", &mut w, &grads[0], ParamKind::Real)], 1.0)
        .unwrap();
    close(w[0], 0.5 - 1e-3 * 0.1 / (0.1 + 1e-8));
    close(w[1], -0.25 + 1e-3 * 2.0 / (2.0 + 1e-8));
    assert_eq!(w[2], 0.0);
    for g in &grads[1..] {
        o.step(&mut [slot("a", &mut w, g, ParamKind::Real)], 1.0)
            .unwrap();
    }
    for (i, w0) in [0.5, -0.25, 0.0].into_iter().enumerate() {
        let gs: Vec<f64> = grads.iter().map(|g| g[i] as f64).collect();
        close(
            w[i],
            *adam_reference(w0, &gs, 1e-3, 0.0, false).last().unwrap(),
        );
    }
    // Step 2 for element 0, by hand: m = 0.9·0.01 + 0.1·0.3 = 0.039,
    // v = 0.999·1e-5 + 0.001·0.09 = 9.999e-5; m̂ = 0.039/0.19, v̂ = 9.999e-5/0.001999.
    let w1 = 0.5 - 1e-3 * 0.1 / (0.1 + 1e-8);
    let w2 = w1 - 1e-3 * (0.039 / 0.19) / ((9.999e-5f64 / 0.001999).sqrt() + 1e-8);
    close(
        *adam_reference(0.5, &[0.1, 0.3], 1e-3, 0.0, false)
            .last()
            .unwrap() as f32,
        w2,
    );
    assert_eq!(o.step_count(), 3);
    assert_eq!(o.param_steps(), vec![("a".to_string(), 3)]);
}

#[test]
fn adam_weight_decay_coupled_and_decoupled_and_lr_scale() {
    for decoupled in [false, true] {
        let config = OptimizerConfig::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            decoupled,
        };
        let mut o = Optimizer::new(config).unwrap();
        let mut w = [2.0f32];
        let mut latent = [0.5f32];
        let gs = [0.05f32, -0.02, 0.01, 0.3];
        for g in gs {
            o.step(
                &mut [
                    slot("w", &mut w, &[g], ParamKind::Real),
                    slot("b", &mut latent, &[g], ParamKind::LatentBinary),
                ],
                0.5,
            )
            .unwrap();
        }
        let gs: Vec<f64> = gs.iter().map(|&g| g as f64).collect();
        // lr_scale 0.5 halves the rate; decay reaches Real params only.
        close(
            w[0],
            *adam_reference(2.0, &gs, 0.005, 0.1, decoupled)
                .last()
                .unwrap(),
        );
        close(
            latent[0],
            *adam_reference(0.5, &gs, 0.005, 0.0, false).last().unwrap(),
        );
    }
}

#[test]
fn latent_weights_are_clipped_unless_disabled() {
    let mut o = Optimizer::new(OptimizerConfig::sgd(1.0)).unwrap();
    let mut w = [0.9f32, -0.9, 0.2];
    let mut r = [0.9f32];
    let g = [-1.0f32, 1.0, 0.1];
    o.step(
        &mut [
            slot("b", &mut w, &g, ParamKind::LatentBinary),
            slot("r", &mut r, &[-1.0], ParamKind::Real),
        ],
        1.0,
    )
    .unwrap();
    assert_eq!(w, [1.0, -1.0, 0.2f32 - 0.1f32]);
    assert_eq!(r, [0.9f32 + 1.0]);
    o.clip_latent = false;
    let mut w = [0.9f32];
    o.step(
        &mut [slot("c", &mut w, &[-1.0], ParamKind::LatentBinary)],
        1.0,
    )
    .unwrap();
    assert_eq!(w, [0.9f32 + 1.0]);
}

#[test]
fn sgd_momentum_nesterov_and_decay_match_pytorch() {
    // By hand, lr 0.1, μ 0.9, wd 0.01, w0 = 1, g = 0.5 then 0.2:
    // step 1: g' = 0.51, b = 0.51; plain: w = 1 − 0.051 = 0.949;
    //         nesterov: g'' = 0.51 + 0.459 = 0.969, w = 0.9031.
    for (nesterov, expect1) in [(false, 0.949f64), (true, 0.9031)] {
        let mut o = Optimizer::new(OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov,
            weight_decay: 0.01,
        })
        .unwrap();
        let mut w = [1.0f32];
        o.step(&mut [slot("w", &mut w, &[0.5], ParamKind::Real)], 1.0)
            .unwrap();
        close(w[0], expect1);
        let w1 = expect1;
        o.step(&mut [slot("w", &mut w, &[0.2], ParamKind::Real)], 1.0)
            .unwrap();
        let g = 0.2 + 0.01 * w1;
        let b = 0.9 * 0.51 + g;
        let step = if nesterov { g + 0.9 * b } else { b };
        close(w[0], w1 - 0.1 * step);
    }
}

#[test]
fn bop_flips_where_the_average_gradient_agrees_with_the_sign() {
    let mut o = Optimizer::new(OptimizerConfig::Bop {
        gamma: 0.5,
        tau: 0.1,
        real: Box::new(OptimizerConfig::sgd(0.1)),
    })
    .unwrap();
    // Latent values are binarised first (sign(0) = +1).
    let mut w = [0.3f32, -0.7, 0.0, 1.0, -1.0];
    // m = 0.5·g: 0.3 (w=+1: w·m = 0.3 > τ, flips), −0.3 (w=−1: 0.3, flips),
    // 0.1 (w=+1: 0.1, not > τ, stays), −0.4 (w=+1: −0.4, stays), −0.1 (w=−1: 0.1, stays).
    let g = [0.6f32, -0.6, 0.2, -0.8, -0.2];
    let mut r = [1.0f32];
    o.step(
        &mut [
            slot("b", &mut w, &g, ParamKind::LatentBinary),
            slot("r", &mut r, &[1.0], ParamKind::Real),
        ],
        1.0,
    )
    .unwrap();
    assert_eq!(w, [-1.0, 1.0, 1.0, 1.0, -1.0]);
    assert_eq!(r, [1.0f32 - 0.1]); // the real optimizer
    let m = &o.state()[0];
    assert_eq!(m.0, "b/m");
    assert_eq!(m.2, vec![0.3, -0.3, 0.1, -0.4, -0.1]);
    // Second step, g = 0 and lr_scale 0.5 (γ = 0.25): m shrinks by ¾:
    // 0.225 (w=−1: −0.225, stays), −0.225 (w=+1: stays), 0.075, −0.3, −0.075.
    o.step(
        &mut [slot("b", &mut w, &[0.0; 5], ParamKind::LatentBinary)],
        0.5,
    )
    .unwrap();
    assert_eq!(w, [-1.0, 1.0, 1.0, 1.0, -1.0]);
    let g = [-1.0f32, 1.0, 1.0, 0.0, 0.0];
    // γ = 0.5: m = (0.225 − 1)/2 = −0.3875 with w = −1: w·m > τ, flips to +1.
    o.step(&mut [slot("b", &mut w, &g, ParamKind::LatentBinary)], 1.0)
        .unwrap();
    assert_eq!(w, [1.0, -1.0, -1.0, 1.0, -1.0]);
}

#[test]
fn frozen_params_and_bad_slots() {
    let mut o = Optimizer::new(OptimizerConfig::adam()).unwrap();
    let mut w = [1.0f32];
    o.step(&mut [slot("f", &mut w, &[5.0], ParamKind::Frozen)], 1.0)
        .unwrap();
    assert_eq!(w, [1.0]);
    assert!(o.state().is_empty());
    let mut a = [1.0f32, 2.0];
    let mut b = [1.0f32];
    let err = o
        .step(
            &mut [
                slot("a", &mut a, &[1.0, 1.0], ParamKind::Real),
                slot("b", &mut b, &[1.0, 1.0], ParamKind::Real),
            ],
            1.0,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameter b: gradient has 2 elements, the parameter 1"
    );
    assert_eq!(a, [1.0, 2.0], "nothing changes on error");
    o.step(&mut [slot("b", &mut b, &[1.0], ParamKind::Real)], 1.0)
        .unwrap();
    let mut b2 = [1.0f32, 1.0];
    let err = o
        .step(&mut [slot("b", &mut b2, &[1.0, 1.0], ParamKind::Real)], 1.0)
        .unwrap_err();
    assert!(err.to_string().contains("its optimizer state 1"), "{err}");
    for bad in [
        OptimizerConfig::Adam {
            lr: -1.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        },
        OptimizerConfig::Adam {
            lr: 1.0,
            beta1: 1.0,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        },
        OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.0,
            nesterov: true,
            weight_decay: 0.0,
        },
        OptimizerConfig::Bop {
            gamma: 1e-4,
            tau: 1e-8,
            real: Box::new(OptimizerConfig::bop()),
        },
    ] {
        assert!(matches!(Optimizer::new(bad), Err(OptimError::Config(_))));
    }
}

#[test]
fn defaults_are_pytorchs_and_larqs() {
    assert_eq!(
        OptimizerConfig::adam(),
        OptimizerConfig::Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false
        }
    );
    let OptimizerConfig::Bop { gamma, tau, real } = OptimizerConfig::bop() else {
        panic!()
    };
    assert_eq!((gamma, tau), (1e-4, 1e-8));
    assert!(matches!(*real, OptimizerConfig::Adam { lr, .. } if lr == 1e-2));
}

#[test]
fn threads_do_not_change_results() {
    let n = 3 * PARALLEL_THRESHOLD + 17;
    let mut rng = crate::util::rng::Rng::new(3);
    let w0: Vec<f32> = (0..n).map(|_| rng.uniform(1.0)).collect();
    let grads: Vec<Vec<f32>> = (0..3)
        .map(|_| (0..n).map(|_| rng.uniform(0.1)).collect())
        .collect();
    for config in [
        OptimizerConfig::adam(),
        OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
        },
        OptimizerConfig::Bop {
            gamma: 0.1,
            tau: 1e-3,
            real: Box::new(OptimizerConfig::adam()),
        },
    ] {
        let mut results = Vec::new();
        for threads in [1, 2, 4] {
            let mut o = Optimizer::new(config.clone()).unwrap();
            o.threads = threads;
            let (mut a, mut b) = (w0.clone(), w0.clone());
            for g in &grads {
                o.step(
                    &mut [
                        slot("a", &mut a, g, ParamKind::Real),
                        slot("b", &mut b, g, ParamKind::LatentBinary),
                    ],
                    0.7,
                )
                .unwrap();
            }
            let bits: Vec<u32> = a.iter().chain(&b).map(|x| x.to_bits()).collect();
            let state: Vec<Vec<u32>> = o
                .state()
                .iter()
                .map(|t| t.2.iter().map(|x| x.to_bits()).collect())
                .collect();
            results.push((bits, state));
        }
        assert!(results.windows(2).all(|r| r[0] == r[1]), "{config:?}");
    }
    assert_eq!(ranges(n, 4).len(), 4);
    assert_eq!((ranges(10, 4).len(), ranges(10, 4)[0].clone()), (1, 0..10));
    assert_eq!((ranges(0, 4).len(), ranges(0, 4)[0].clone()), (1, 0..0));
}

#[test]
fn state_round_trips_and_resumes_identically() {
    let config = OptimizerConfig::Bop {
        gamma: 0.1,
        tau: 1e-3,
        real: Box::new(OptimizerConfig::adam()),
    };
    let grads: Vec<[f32; 3]> = vec![
        [0.1, -0.2, 0.3],
        [0.2, 0.1, -0.5],
        [-0.3, 0.3, 0.1],
        [0.5, 0.5, 0.5],
    ];
    let run = |o: &mut Optimizer, w: &mut [f32; 3], b: &mut [f32; 3], gs: &[[f32; 3]]| {
        for g in gs {
            o.step(
                &mut [
                    slot("w", w, g, ParamKind::Real),
                    slot("b", b, g, ParamKind::LatentBinary),
                ],
                1.0,
            )
            .unwrap();
        }
    };
    let mut full = Optimizer::new(config.clone()).unwrap();
    let (mut w, mut b) = ([0.1f32, 0.2, 0.3], [0.5f32, -0.5, 0.1]);
    run(&mut full, &mut w, &mut b, &grads);
    let mut first = Optimizer::new(config.clone()).unwrap();
    let (mut w2, mut b2) = ([0.1f32, 0.2, 0.3], [0.5f32, -0.5, 0.1]);
    run(&mut first, &mut w2, &mut b2, &grads[..2]);
    let mut resumed = Optimizer::new(config).unwrap();
    resumed
        .load_state(first.state(), &first.param_steps(), first.step_count())
        .unwrap();
    assert_eq!(resumed.state(), first.state());
    run(&mut resumed, &mut w2, &mut b2, &grads[2..]);
    assert_eq!((w, b), (w2, b2));
    assert_eq!(resumed.step_count(), 4);
    let names: Vec<String> = full.state().into_iter().map(|t| t.0).collect();
    assert_eq!(names, vec!["b/m", "w/m", "w/v"]);
    // Bad state is refused and the old state kept.
    let before = resumed.state();
    for (tensors, steps, needle) in [
        (
            vec![("w".to_string(), vec![1], vec![0.0])],
            vec![],
            "not named PARAM/m",
        ),
        (
            vec![("w/m".to_string(), vec![2], vec![0.0])],
            vec![],
            "shape [2] but 1 values",
        ),
        (
            vec![
                ("w/m".to_string(), vec![1], vec![0.0]),
                ("w/v".to_string(), vec![2], vec![0.0, 0.0]),
            ],
            vec![],
            "w/m has 1 values but w/v has 2",
        ),
        (vec![], vec![("x".to_string(), 3)], "a step count for 'x'"),
    ] {
        let err = resumed
            .load_state(tensors, &steps, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    assert_eq!(resumed.state(), before);
    let mut adam = Optimizer::new(OptimizerConfig::adam()).unwrap();
    let err = adam
        .load_state(vec![("w/m".to_string(), vec![1], vec![0.0])], &[], 0)
        .unwrap_err();
    assert!(
        err.to_string().contains("Adam needs both w/m and w/v"),
        "{err}"
    );
}
