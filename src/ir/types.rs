//! Tensor types: an element type, a shape and an extent.
//!
//! The batch dimension is implicit everywhere in the IR: a model is typed for one
//! sample and run on N samples at once, so `f32[32, 8, 8]` is a `[N, 32, 8, 8]`
//! array at run time. Training graphs also hold values that reduce over the
//! batch (a loss, a parameter's gradient, a batch statistic): their extent is
//! [`Extent::Batch`] and they have no batch axis at run time.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// A ±1 value. Reads as ±1.0 wherever an f32 is expected; packed as one bit
    /// per value (bit 1 = −1, bit 0 = +1, little-endian along channels).
    Bit,
}

impl DType {
    /// The name used in the text format.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bit => "bit",
        }
    }

    /// Parses a name of the text format.
    pub fn from_name(name: &str) -> Option<DType> {
        match name {
            "f32" => Some(DType::F32),
            "bit" => Some(DType::Bit),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The largest number of elements one sample of a tensor may have. Large enough
/// for any real network, small enough that element counts, byte sizes and MAC
/// counts of a whole layer never overflow a `u64`.
pub const MAX_ELEMENTS: u64 = 1 << 32;

/// A per-sample shape, outermost dimension first (`[C, H, W]` for images).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The number of elements of one sample. Shapes in a verified graph hold at
    /// most [`MAX_ELEMENTS`], so this cannot overflow for them.
    pub fn elements(&self) -> usize {
        self.0.iter().product()
    }

    /// The number of elements, or `None` if it exceeds [`MAX_ELEMENTS`].
    pub fn checked_elements(&self) -> Option<u64> {
        let mut n: u64 = 1;
        for &d in &self.0 {
            n = n.checked_mul(d as u64)?;
            if n > MAX_ELEMENTS {
                return None;
            }
        }
        Some(n)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Shape {
        Shape(dims)
    }
}

/// Whether a value exists once per sample or once for the whole batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Extent {
    /// One value per sample: `[N, ...shape]` at run time (every value of an
    /// inference model).
    #[default]
    Sample,
    /// One value for the whole batch, reduced over it: `shape` at run time
    /// (losses, parameter gradients and batch statistics of training graphs).
    Batch,
}

/// The type of a value: element type, shape and extent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Per-sample shape (the batch dimension is implicit), or the whole shape
    /// of a batch-extent value.
    pub shape: Shape,
    /// Per sample (the default) or per batch.
    #[serde(default, skip_serializing_if = "is_sample")]
    pub extent: Extent,
}

fn is_sample(e: &Extent) -> bool {
    *e == Extent::Sample
}

impl TensorType {
    /// A tensor type of the given element type and dimensions.
    pub fn new(dtype: DType, dims: Vec<usize>) -> TensorType {
        TensorType {
            dtype,
            shape: Shape(dims),
            extent: Extent::Sample,
        }
    }

    /// An f32 value reduced over the batch (extent [`Extent::Batch`]).
    pub fn batch_f32(dims: Vec<usize>) -> TensorType {
        TensorType {
            extent: Extent::Batch,
            ..TensorType::f32(dims)
        }
    }

    /// The same type with element type `dtype`.
    pub fn with_dtype(&self, dtype: DType) -> TensorType {
        TensorType {
            dtype,
            ..self.clone()
        }
    }

    /// An f32 tensor type.
    pub fn f32(dims: Vec<usize>) -> TensorType {
        TensorType::new(DType::F32, dims)
    }

    /// A bit tensor type.
    pub fn bit(dims: Vec<usize>) -> TensorType {
        TensorType::new(DType::Bit, dims)
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// Bytes one sample occupies: 4 per f32 element; bit tensors are packed
    /// along their first (channel) axis into 64-bit words.
    pub fn bytes_per_sample(&self) -> u64 {
        let dims = self.dims();
        match self.dtype {
            DType::F32 => 4 * self.shape.elements() as u64,
            DType::Bit => match dims.split_first() {
                None => 8,
                Some((&c, rest)) => {
                    let words = c.div_ceil(64) as u64;
                    8 * words * rest.iter().product::<usize>() as u64
                }
            },
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)?;
        match self.extent {
            Extent::Sample => Ok(()),
            Extent::Batch => f.write_str(" per batch"),
        }
    }
}
