//! Reading and writing data files.

pub mod npy;
pub mod weights;
