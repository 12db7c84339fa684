//! Training.

pub mod engine;
