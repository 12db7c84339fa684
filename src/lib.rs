//! onebit: a compiler toolchain for 1-bit (binarized) neural networks.
//!
//! The pipeline, one module per stage:
//! - [`text`]: the `.bnn` model language: parser, lowering to IR, printer, diagnostics;
//! - [`ir`]: the typed graph IR, its verifier, parameters and the reference interpreter;
//! - [`passes`]: graph rewrites: batchnorm and scale folding into thresholds, packing, cell selection;
//! - [`codegen`]: Cranelift code generation (JIT and object files);
//! - [`runtime`]: compiled models and their execution;
//! - [`io`]: weight (safetensors) and data (`.npy`) files;
//! - [`train`]: training support: data sets, optimizers, schedules, checkpoints, metrics;
//! - [`nas`]: architecture search: search spaces, DARTS/BNAS search, discretisation.
//!
//! ```
//! let graph = onebit::text::parse_str(
//!     "model m { input x: f32[16]  y = bdense(sign(x), 4)  output y }",
//! ).unwrap();
//! assert_eq!(graph.node(graph.outputs()[0]).ty.to_string(), "f32[4]");
//! ```
//!
//! # Embedding
//!
//! [`compile`] takes a model's source and weights to a native
//! [`CompiledModel`]; [`parse`], [`verify`], [`optimize`] and
//! [`compile_graph`] are the same pipeline in stages.
//!
//! ```
//! let source = "model m { input x: f32[64]  y = bdense(sign(x), 10)  output y }";
//! let graph = onebit::parse(source)?;
//! let weights = onebit::ir::Params::init(&graph, 7);
//! let model = onebit::compile(source, &weights, &onebit::Options::default())?;
//! let x: Vec<f32> = (0..2 * 64).map(|i| (i % 5) as f32 - 2.0).collect();
//! let y = model.run(&x, 2)?;
//! assert_eq!(y.len(), 2 * 10);
//! // Binary layers without a scale give integer dot products, exactly.
//! let reference = onebit::ir::interp::run(
//!     &graph,
//!     &weights,
//!     &[onebit::ir::Tensor { shape: vec![2, 64], data: x }],
//! )?;
//! assert_eq!(y, reference[0].data);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
// Errors carry what a good message needs (a located diagnostic with its
// source line and labels, the tensor and its shape); they are built once per
// failed run, so their size on the error path costs nothing that matters.
#![allow(clippy::result_large_err)]

pub mod codegen;
pub mod io;
pub mod ir;
pub mod nas;
pub mod passes;
pub mod runtime;
pub mod text;
pub mod train;
pub mod util;

pub use codegen::{CodegenError, Options, Popcount};
pub use runtime::{CompiledModel, RunError, Scratch};

use ir::{Graph, Params, Verified};

/// Any failure of the embedding API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source does not parse or lower.
    #[error("{0}")]
    Parse(#[from] text::SourceError),
    /// The graph is not a valid model.
    #[error("invalid model: {0}")]
    Verify(#[from] ir::verify::VerifyError),
    /// The weights do not match the model.
    #[error("{0}")]
    Params(#[from] ir::params::ParamsError),
    /// Code generation failed.
    #[error("{0}")]
    Codegen(#[from] CodegenError),
    /// A run was refused.
    #[error("{0}")]
    Run(#[from] RunError),
    /// An optimisation pass failed.
    #[error("{0}")]
    Pass(#[from] passes::PassError),
}

/// Parses and lowers `.bnn` source to a graph.
///
/// ```
/// let g = onebit::parse("model m { input x: f32[4]  y = relu(x)  output y }")?;
/// assert_eq!(g.name, "m");
/// # Ok::<(), onebit::Error>(())
/// ```
pub fn parse(source: &str) -> Result<Graph, Error> {
    Ok(text::parse_str(source)?)
}

/// Verifies a graph; code generation takes the returned proof.
pub fn verify(graph: &Graph) -> Result<Verified<'_>, Error> {
    Ok(ir::verify(graph)?)
}

/// Runs the default pass pipeline ([`passes`]) on `graph` and `params`:
/// batchnorm, XNOR-Net scales and signs folded into binary layers as exact
/// integer thresholds, binary weights packed. The model computes the same
/// outputs (bits exactly, f32 to rounding). Returns what the passes did.
pub fn optimize(graph: &mut Graph, params: &mut Params) -> Result<passes::PassReport, Error> {
    Ok(passes::optimize(
        graph,
        params,
        &passes::PassSelection::default_pipeline(),
        &passes::PassOptions::default(),
        |_, _| {},
    )?)
}

/// Compiles a graph (after [`optimize`]) to native code.
pub fn compile_graph(
    graph: &Graph,
    params: &Params,
    options: &Options,
) -> Result<CompiledModel, Error> {
    let verified = verify(graph)?;
    Ok(CompiledModel::compile(verified, params, options)?)
}

/// Parses, verifies, optimizes and JIT-compiles a model.
///
/// ```
/// let src = "model m { input x: f32[1, 8, 8]  y = global_avgpool(x)  output y }";
/// let g = onebit::parse(src)?;
/// let model = onebit::compile(src, &onebit::ir::Params::init(&g, 0), &Default::default())?;
/// assert_eq!(model.run(&[1.0; 64], 1)?, vec![1.0]);
/// # Ok::<(), onebit::Error>(())
/// ```
pub fn compile(source: &str, weights: &Params, options: &Options) -> Result<CompiledModel, Error> {
    let mut graph = parse(source)?;
    let mut params = weights.clone();
    optimize(&mut graph, &mut params)?;
    compile_graph(&graph, &params, options)
}
