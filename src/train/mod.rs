//! Training: the compiled training step, data sets, optimizers,
//! learning-rate schedules, checkpoints, metrics, and the trainer that drives
//! them.
//!
//! The support modules are self-contained: none of them knows about graphs,
//! only about named `f32` buffers, samples and labels. The trainer
//! ([`trainer`]) differentiates a model into a training graph and runs it on
//! the step engine ([`engine`]) or the reference interpreter.

pub mod checkpoint;
pub mod data;
pub mod engine;
pub mod kernel_loss;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;
