//! Training: data sets, optimizers, learning-rate schedules, checkpoints and
//! metrics.
//!
//! These support modules are self-contained so that the training loop (and
//! the differentiation pass it drives) can be written and tested apart from
//! them: none of them knows about graphs, only about named `f32` buffers,
//! samples and labels.

pub mod checkpoint;
pub mod data;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;
