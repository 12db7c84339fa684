//! Reading and writing data files.

pub mod canonical;
pub mod npy;
pub mod weights;
