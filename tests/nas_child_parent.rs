//! CP-NAS's two ingredients beside the search loop: the full-precision
//! parent (the supernet with binarization off) and the child-parent kernel
//! loss. The parent is checked against the child on inputs and weights where
//! binarization is the identity (±1 everywhere, so α = 1 and sign(v) = v);
//! the kernel loss against its definition, through a real training step.

use onebit::ir::interp;
use onebit::ir::{Params, Tensor};
use onebit::nas::parent::{full_precision, has_binarization};
use onebit::train::kernel_loss::KernelTargets;
use onebit::train::optim::OptimizerConfig;
use onebit::train::trainer::{StepRunner, Trainer, TrainerConfig};
use onebit::util::rng::Rng;

/// Every kind of binarization the parent undoes: binary weights over a real
/// input, a binary convolution of signs (zero-padded), a binary dense layer
/// of signs, and binary weights over the real sum that feeds the head.
const MIXED: &str = "
model mixed {
  input x: f32[2, 4, 4]
  a = conv2d(x, 3, kernel=3, pad=1, bias=false, weights=binary, scale=channel)
  b = bconv2d(sign(x), 3, kernel=3, pad=1, scale=channel)
  c = bdense(sign(flatten(x)), 6, scale=channel)
  h = dense(flatten(concat(a, b)), 6, weights=binary, scale=channel)
  y = add(h, c)
  output y
}
";

fn plus_minus_one(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| if rng.normal() >= 0.0 { 1.0 } else { -1.0 })
        .collect()
}

#[test]
fn the_parent_computes_what_the_child_does_where_binarization_is_the_identity() {
    let child = onebit::parse(MIXED).unwrap();
    let mut params = Params::init(&child, 3);
    let mut rng = Rng::new(11);
    for t in params.tensors.values_mut() {
        t.data = plus_minus_one(&mut rng, t.data.len());
    }
    let (parent, parent_params) = full_precision(&child, &params).unwrap();
    onebit::ir::verify::verify(&parent).unwrap();
    assert!(has_binarization(&child));
    assert!(!has_binarization(&parent));
    // Every parameter is shared by name and shape (no layer here has a
    // learned scale or a projection, the only ones the parent drops).
    assert_eq!(parent_params, params);
    parent_params.clone().check(&parent).unwrap();
    insta::assert_snapshot!(onebit::text::print(&parent));

    let x = Tensor {
        shape: vec![5, 2, 4, 4],
        data: plus_minus_one(&mut rng, 5 * 32),
    };
    let of_child = interp::run(&child, &params, std::slice::from_ref(&x)).unwrap();
    let of_parent = interp::run(&parent, &parent_params, std::slice::from_ref(&x)).unwrap();
    // Sums of ±1 products: integers, exact in f32 on both sides.
    assert_eq!(of_child, of_parent);

    // With real weights the two differ: the parent really is full precision.
    let real = Params::init(&child, 3);
    let (_, real_parent) = full_precision(&child, &real).unwrap();
    let a = interp::run(&child, &real, std::slice::from_ref(&x)).unwrap();
    let b = interp::run(&parent, &real_parent, std::slice::from_ref(&x)).unwrap();
    assert_ne!(a, b);
}

#[test]
fn a_learned_scale_and_a_projection_are_not_the_parents() {
    let child = onebit::parse(
        "model m {
  input x: f32[8]
  d = dense(x, 4, weights=binary, scale=learned, projection=true)
  output d
}",
    )
    .unwrap();
    let params = Params::init(&child, 1);
    let (parent, parent_params) = full_precision(&child, &params).unwrap();
    let names: Vec<&String> = parent_params.tensors.keys().collect();
    assert_eq!(names, ["d.bias", "d.weight"]);
    assert_eq!(
        parent_params.tensors["d.weight"],
        params.tensors["d.weight"]
    );
    assert!(
        onebit::text::print(&parent).contains("d = dense(x, 4)  # f32[4]"),
        "{}",
        onebit::text::print(&parent)
    );
}

#[test]
fn the_kernel_loss_pulls_binary_weights_towards_the_parents_kernels_as_defined() {
    // y = dense(x, 3, weights=binary, scale=channel) + a real bias: one
    // latent binary weight of 3 rows of 5.
    let model = onebit::parse(
        "model m {
  input x: f32[5]
  y = dense(x, 3, weights=binary, scale=channel)
  output y
}",
    )
    .unwrap();
    let params = Params::init(&model, 4);
    let lr = 0.1f32;
    let config = TrainerConfig {
        runner: StepRunner::Engine,
        optimizer: OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        clip_latent: false,
        threads: 1,
        ..TrainerConfig::default()
    };
    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..4 * 5).map(|_| rng.normal()).collect();
    let labels = [0u32, 2, 1, 2];
    let h: Vec<f32> = (0..15).map(|_| 0.3 * rng.normal()).collect();
    let lambda = 0.5f32;

    let mut plain = Trainer::new(&model, params.clone(), &config).unwrap();
    let mut pulled = Trainer::new(&model, params.clone(), &config).unwrap();
    pulled.set_kernel_targets(Some(KernelTargets {
        weight: lambda,
        kernels: [("y.weight".to_string(), h.clone())].into(),
    }));
    let a = plain.step(&x, &labels, 1.0).unwrap();
    let b = pulled.step(&x, &labels, 1.0).unwrap();

    // The definition, computed here: per row c, α_c = mean|W_c|,
    // L = λ Σ_c mean_k (α_c sign W_ck − H_ck)², and through the clipped STE
    // with α constant ∂L/∂W_ck = λ (2/5)(α_c sign W_ck − H_ck) α_c.
    let w = &params.tensors["y.weight"].data;
    let (mut loss, mut grad) = (0.0f64, [0.0f64; 15]);
    for c in 0..3 {
        let row = &w[5 * c..5 * c + 5];
        let alpha = row.iter().map(|v| f64::from(v.abs())).sum::<f64>() / 5.0;
        for k in 0..5 {
            let s = if row[k] >= 0.0 { 1.0 } else { -1.0 };
            let diff = alpha * s - f64::from(h[5 * c + k]);
            loss += f64::from(lambda) * diff * diff / 5.0;
            grad[5 * c + k] = f64::from(lambda) * 2.0 / 5.0 * diff * alpha;
        }
    }
    assert!(
        (f64::from(b.loss - a.loss) - loss).abs() < 1e-5,
        "{} vs {loss}",
        b.loss - a.loss
    );
    let (wa, wb) = (
        &plain.params().tensors["y.weight"].data,
        &pulled.params().tensors["y.weight"].data,
    );
    for k in 0..15 {
        let moved = f64::from(wb[k] - wa[k]);
        assert!(
            (moved + f64::from(lr) * grad[k]).abs() < 1e-6,
            "weight {k}: moved {moved}, expected {}",
            -f64::from(lr) * grad[k]
        );
    }
    // The real bias has no kernel loss.
    assert_eq!(
        plain.params().tensors["y.bias"],
        pulled.params().tensors["y.bias"]
    );
}
