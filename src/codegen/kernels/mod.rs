//! The kernels, one module per family. Each emits one step function body and
//! returns the step's number of work units.

pub mod binary;
pub mod elementwise;
pub mod float;
pub mod misc;
pub mod pool;
pub mod wide;
