//! Reading and writing NumPy `.npy` files.
//!
//! This is a small, dependency-free implementation of the
//! [`.npy` format](https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html),
//! versions 1.0, 2.0 and 3.0. Every array is read into an [`Array`] of `f32`
//! values in C (row-major) order, whatever numeric dtype the file stores:
//!
//! | dtype (either byte order) | conversion to `f32`                      |
//! | ------------------------- | ---------------------------------------- |
//! | `f2`, `f4`, `f8`          | exact for `f2` and `f4`, rounded for `f8` |
//! | `i1`, `i2`, `i4`, `i8`    | rounded to the nearest `f32`             |
//! | `u1`, `u2`, `u4`, `u8`    | rounded to the nearest `f32`             |
//! | `b1` (bool)               | `0.0` for false, `1.0` otherwise         |
//!
//! Complex, string, datetime, object and structured dtypes are rejected with
//! an [`NpyError`], as are Fortran-ordered arrays of rank 2 or more.
//!
//! The reader never panics and never allocates more than a small multiple of
//! the input size, whatever the input bytes: the header dict is parsed by a
//! tiny hand-written parser for the Python literal subset that NumPy writes,
//! the shape is checked with overflow-checked arithmetic, and the data length
//! must match the shape exactly.
//!
//! [`write()`] produces version 1.0 files of dtype `<f4` (falling back to
//! version 2.0 only when the header is too long for 1.0, as NumPy does), with
//! the data aligned to 64 bytes.

use std::fmt;
use std::path::{Path, PathBuf};

/// The magic string every `.npy` file starts with.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Data in files we write starts at a multiple of this many bytes.
const ALIGN: usize = 64;

/// Limit on the nesting of tuples, lists and dicts in a header, so that a
/// malicious header cannot overflow the stack.
const MAX_NESTING: usize = 32;

/// Longest dtype or header excerpt quoted verbatim in an error message.
const MAX_QUOTED: usize = 60;

/// An n-dimensional array of `f32` values in C (row-major) order.
///
/// `data.len()` equals the product of `shape` (1 for the scalar shape `[]`)
/// for every array returned by [`read`] and [`read_file`].
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The size of each dimension; empty for a scalar (0-dimensional) array.
    pub shape: Vec<usize>,
    /// The elements in C order (the last index varies fastest).
    pub data: Vec<f32>,
}

/// Everything that can go wrong reading or writing a `.npy` file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// The input does not start with the `.npy` magic string.
    #[error("not a .npy file: bad magic")]
    BadMagic,

    /// The input ends before the part named by `what` is complete.
    #[error("truncated .npy file: the {what} needs {needed} bytes, but the file has only {found}")]
    Truncated {
        /// The part of the file that is incomplete, e.g. `"header"`.
        what: &'static str,
        /// The file size needed to hold that part.
        needed: usize,
        /// The actual file size.
        found: usize,
    },

    /// The format version is not 1.0, 2.0 or 3.0.
    #[error("unsupported .npy format version {major}.{minor} (expected 1.0, 2.0 or 3.0)")]
    UnsupportedVersion {
        /// The major version byte.
        major: u8,
        /// The minor version byte.
        minor: u8,
    },

    /// The header is not a valid dict literal with the expected keys.
    #[error("malformed .npy header: {0}")]
    Header(String),

    /// The dtype is well-formed but is not a float, integer or bool dtype.
    #[error("unsupported dtype '{0}' (expected a float, integer or bool dtype)")]
    UnsupportedDtype(String),

    /// The dtype is `O` (Python objects), which cannot be read without pickle.
    #[error(
        "unsupported dtype '{0}': object arrays hold pickled Python objects, \
         not numbers (expected a float, integer or bool dtype)"
    )]
    ObjectDtype(String),

    /// The dtype is a structured (record) dtype, given as a list of fields.
    #[error("unsupported structured dtype {0} (expected a plain float, integer or bool dtype)")]
    StructuredDtype(String),

    /// The array is stored in Fortran order and has rank 2 or more.
    #[error(
        "unsupported fortran_order array of shape {shape:?}: Fortran order is only \
         supported up to rank 1 (save np.ascontiguousarray(a) instead)"
    )]
    FortranOrder {
        /// The shape from the header.
        shape: Vec<usize>,
    },

    /// The shape's element or byte count does not fit in memory addresses.
    #[error("shape {shape:?} of {descr} is too large: its byte size overflows")]
    TooLarge {
        /// The shape from the header.
        shape: Vec<usize>,
        /// The dtype from the header.
        descr: String,
    },

    /// The data after the header is not exactly as long as the shape needs.
    #[error("data is {found} bytes, but shape {shape:?} of {descr} needs {expected}")]
    DataLength {
        /// The shape from the header.
        shape: Vec<usize>,
        /// The dtype from the header.
        descr: String,
        /// The number of data bytes the shape and dtype need.
        expected: usize,
        /// The number of data bytes present.
        found: usize,
    },

    /// The number of values given to [`write_file`] does not match the shape.
    #[error("shape {shape:?} has {expected} elements, but {found} values were given")]
    ShapeMismatch {
        /// The shape given.
        shape: Vec<usize>,
        /// The element count of the shape (`None` inside if it overflows).
        expected: ElementCount,
        /// The number of values given.
        found: usize,
    },

    /// A file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file's path.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file's path.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A format error in a named file (from [`read_file`] or [`write_file`]).
    #[error("{}: {source}", .path.display())]
    InFile {
        /// The file's path.
        path: PathBuf,
        /// The format error.
        #[source]
        source: Box<NpyError>,
    },
}

/// The element count of a shape, as reported in [`NpyError::ShapeMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementCount(pub Option<usize>);

impl fmt::Display for ElementCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("more than usize::MAX"),
        }
    }
}

/// Parses a `.npy` file held in memory, converting its elements to `f32`.
///
/// Accepts format versions 1.0, 2.0 and 3.0 and the dtypes listed in the
/// [module documentation](self), in either byte order. Fortran order is
/// accepted only for arrays of rank 0 or 1, where it is the same as C order.
///
/// # Errors
///
/// Returns an [`NpyError`] for anything but a well-formed file: bad magic or
/// version, truncation, a malformed header, an unsupported dtype or order, or
/// data that is not exactly as long as the shape needs. Never panics.
pub fn read(bytes: &[u8]) -> Result<Array, NpyError> {
    let (header, data) = split_header(bytes)?;
    let header = parse_header(header)?;
    let dtype = header.dtype;
    let shape = header.shape;

    if header.fortran_order && shape.len() > 1 {
        return Err(NpyError::FortranOrder { shape });
    }

    // Every array is converted to f32, and what is read must be writable
    // (and readable again) as f32: so the shape must also fit with 4-byte
    // items, even for 1- and 2-byte dtypes (found by `fuzz/`'s npy target).
    let fits_as_f32 = element_count_for_read(&shape, size_of::<f32>()).is_some();
    let Some(count) = element_count_for_read(&shape, dtype.size).filter(|_| fits_as_f32) else {
        return Err(NpyError::TooLarge {
            shape,
            descr: header.descr,
        });
    };
    // `element_count_for_read` proved `count * size` does not overflow.
    let expected = count.saturating_mul(dtype.size);
    if data.len() != expected {
        return Err(NpyError::DataLength {
            shape,
            descr: header.descr,
            expected,
            found: data.len(),
        });
    }

    Ok(Array {
        shape,
        data: dtype.convert(data),
    })
}

/// Reads and parses the `.npy` file at `path`; see [`read`].
///
/// # Errors
///
/// [`NpyError::Read`] if the file cannot be read, otherwise the error from
/// [`read`] wrapped in [`NpyError::InFile`] so that it names the path.
pub fn read_file(path: &Path) -> Result<Array, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    read(&bytes).map_err(|e| NpyError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Serializes `data`, an array of the given `shape` in C order, as a `.npy`
/// file of dtype `<f4`.
///
/// The file is format version 1.0 (2.0 if the rank is so large that the
/// header does not fit in 1.0), and its header is padded with spaces and
/// ends in `'\n'` so that the data starts at a multiple of 64 bytes, as
/// NumPy does. An empty `shape` writes a scalar, holding one value.
///
/// # Panics
///
/// If `data.len()` is not the product of `shape` ([`write_file`] reports
/// that as an error instead), or if `shape` has so many dimensions (hundreds
/// of millions) that the header would exceed the format's 4 GiB limit.
#[must_use]
pub fn write(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let expected = element_count(shape);
    assert!(
        expected == Some(data.len()),
        "npy::write: shape {shape:?} has {} elements, but {} values were given",
        ElementCount(expected),
        data.len()
    );

    let mut dict = String::from("{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (i, dim) in shape.iter().enumerate() {
        if i > 0 {
            dict.push_str(", ");
        }
        dict.push_str(&dim.to_string());
    }
    if shape.len() == 1 {
        dict.push(',');
    }
    dict.push_str("), }");

    // The header length field is 2 bytes in version 1.0 and 4 bytes in 2.0;
    // like NumPy, use 2.0 only when the header does not fit in 1.0.
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    let v1_len = padded_len(dict.len(), MAGIC.len() + 4);
    if let Ok(len) = u16::try_from(v1_len) {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        let v2_len = padded_len(dict.len(), MAGIC.len() + 6);
        // Documented panic: only a shape of hundreds of millions of
        // dimensions needs a header of 4 GiB.
        let len = u32::try_from(v2_len).expect("npy::write: header longer than 4 GiB");
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&len.to_le_bytes());
    }
    let data_start = out.len() + padded_len(dict.len(), out.len());
    out.reserve_exact(data_start - out.len() + 4 * data.len());
    out.extend_from_slice(dict.as_bytes());
    out.resize(data_start - 1, b' ');
    out.push(b'\n');
    debug_assert_eq!(out.len() % ALIGN, 0);
    for value in data {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// Writes `data`, an array of the given `shape` in C order, to `path` as a
/// `.npy` file of dtype `<f4`; see [`write()`].
///
/// # Errors
///
/// [`NpyError::InFile`] wrapping [`NpyError::ShapeMismatch`] if `data.len()`
/// is not the product of `shape`, and [`NpyError::Write`] if the file cannot
/// be written.
pub fn write_file(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    let expected = element_count(shape);
    if expected != Some(data.len()) {
        return Err(NpyError::InFile {
            path: path.to_path_buf(),
            source: Box::new(NpyError::ShapeMismatch {
                shape: shape.to_vec(),
                expected: ElementCount(expected),
                found: data.len(),
            }),
        });
    }
    std::fs::write(path, write(shape, data)).map_err(|source| NpyError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The product of `shape`, or `None` on overflow.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
}

/// The element count of `shape`, or `None` if the array would be too large
/// to address: like NumPy, the product of the *nonzero* dimensions times the
/// item size must fit in `isize`, even when some dimension is zero.
fn element_count_for_read(shape: &[usize], item_size: usize) -> Option<usize> {
    let nonzero = shape
        .iter()
        .filter(|&&dim| dim != 0)
        .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))?;
    let bytes = nonzero.checked_mul(item_size)?;
    if isize::try_from(bytes).is_err() {
        return None;
    }
    Some(if shape.contains(&0) { 0 } else { nonzero })
}

/// The length of a header holding a dict of `dict_len` bytes, padded with
/// spaces and a final newline so that `prefix + length` is a multiple of
/// [`ALIGN`].
fn padded_len(dict_len: usize, prefix: usize) -> usize {
    let unpadded = prefix + dict_len + 1;
    dict_len + 1 + (ALIGN - unpadded % ALIGN) % ALIGN
}

/// Checks the magic and version and splits the input into the header text
/// (decoded as Latin-1 for versions 1.0 and 2.0, UTF-8 for 3.0) and the data.
fn split_header(bytes: &[u8]) -> Result<(String, &[u8]), NpyError> {
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) && !bytes.is_empty() {
            truncated("magic string", MAGIC.len(), bytes.len())
        } else {
            NpyError::BadMagic
        });
    }
    if !bytes.starts_with(MAGIC) {
        return Err(NpyError::BadMagic);
    }
    let (major, minor) = match bytes {
        [_, _, _, _, _, _, major, minor, ..] => (*major, *minor),
        _ => return Err(truncated("version", 8, bytes.len())),
    };
    let len_size = match (major, minor) {
        (1, 0) => 2,
        (2 | 3, 0) => 4,
        _ => return Err(NpyError::UnsupportedVersion { major, minor }),
    };
    let header_start = 8 + len_size;
    let Some(len_bytes) = bytes.get(8..header_start) else {
        return Err(truncated("header length", header_start, bytes.len()));
    };
    let header_len = len_bytes
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let Some(data_start) = header_start.checked_add(header_len) else {
        return Err(truncated("header", usize::MAX, bytes.len()));
    };
    let (Some(header), Some(data)) = (bytes.get(header_start..data_start), bytes.get(data_start..))
    else {
        return Err(truncated("header", data_start, bytes.len()));
    };
    let header = if major == 3 {
        match std::str::from_utf8(header) {
            Ok(text) => text.to_owned(),
            Err(e) => {
                return Err(NpyError::Header(format!(
                    "header is not valid UTF-8 (at byte {})",
                    e.valid_up_to()
                )));
            }
        }
    } else {
        header.iter().map(|&b| char::from(b)).collect()
    };
    Ok((header, data))
}

fn truncated(what: &'static str, needed: usize, found: usize) -> NpyError {
    NpyError::Truncated {
        what,
        needed,
        found,
    }
}

/// Quotes `text` for an error message, abbreviated if it is long.
fn abbreviate(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED {
        text.to_owned()
    } else {
        let head: String = text.chars().take(MAX_QUOTED).collect();
        format!("{head}...")
    }
}

/// The validated contents of a header dict.
struct Header {
    /// The `descr` string, for error messages.
    descr: String,
    dtype: Dtype,
    fortran_order: bool,
    shape: Vec<usize>,
}

fn parse_header(text: String) -> Result<Header, NpyError> {
    let mut parser = Parser {
        text: &text,
        pos: 0,
        depth: 0,
    };
    parser.skip_whitespace();
    if parser.peek() != Some(b'{') {
        return Err(parser.error("expected the header to be a dict starting with '{'"));
    }
    let value = parser.value()?;
    parser.skip_whitespace();
    if parser.pos < text.len() {
        return Err(parser.error("unexpected text after the header dict"));
    }
    let Value::Dict(entries) = value else {
        return Err(NpyError::Header("expected a dict".to_owned()));
    };

    let mut descr = None;
    let mut fortran_order = None;
    let mut shape = None;
    for entry in entries {
        let slot = match entry.key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran_order,
            "shape" => &mut shape,
            // Extra keys carry nothing we need; NumPy never writes any.
            _ => continue,
        };
        if slot.is_some() {
            return Err(NpyError::Header(format!(
                "duplicate key '{}'",
                abbreviate(&entry.key)
            )));
        }
        *slot = Some((entry.value, entry.span));
    }
    let missing = |key: &str| NpyError::Header(format!("missing key '{key}'"));

    let (descr, span) = descr.ok_or_else(|| missing("descr"))?;
    let descr = match descr {
        Value::Str(descr) => descr,
        Value::List => {
            let raw = text.get(span.0..span.1).unwrap_or("[...]");
            return Err(NpyError::StructuredDtype(abbreviate(raw)));
        }
        other => {
            return Err(NpyError::Header(format!(
                "'descr' must be a string, not {}",
                other.kind()
            )));
        }
    };
    let dtype = Dtype::parse(&descr)?;

    let fortran_order = match fortran_order.ok_or_else(|| missing("fortran_order"))?.0 {
        Value::Bool(b) => b,
        other => {
            return Err(NpyError::Header(format!(
                "'fortran_order' must be True or False, not {}",
                other.kind()
            )));
        }
    };

    let shape = match shape.ok_or_else(|| missing("shape"))?.0 {
        Value::Tuple(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Int(n) => usize::try_from(n).map_err(|_| {
                    NpyError::Header(format!("shape dimension {n} is negative or too large"))
                }),
                other => Err(NpyError::Header(format!(
                    "shape dimensions must be integers, not {}",
                    other.kind()
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => {
            return Err(NpyError::Header(format!(
                "'shape' must be a tuple, not {}",
                other.kind()
            )));
        }
    };

    Ok(Header {
        descr: abbreviate(&descr),
        dtype,
        fortran_order,
        shape,
    })
}

/// The kind of a supported element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    UInt,
    Bool,
}

/// A supported element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dtype {
    kind: Kind,
    /// Item size in bytes.
    size: usize,
    little_endian: bool,
}

impl Dtype {
    /// Parses a NumPy type string such as `<f4`, `|u1` or `>i8`.
    fn parse(descr: &str) -> Result<Dtype, NpyError> {
        let unsupported = || NpyError::UnsupportedDtype(abbreviate(descr));
        let native = cfg!(target_endian = "little");
        // Slicing at 1 is safe: the first byte was matched as ASCII.
        let (little_endian, rest) = match descr.as_bytes().first() {
            Some(b'<') => (true, &descr[1..]),
            Some(b'>') => (false, &descr[1..]),
            // '|' means "not applicable"; NumPy reads it as native order.
            Some(b'=' | b'|') => (native, &descr[1..]),
            _ => (native, descr),
        };
        let mut chars = rest.chars();
        let kind = match chars.next() {
            Some('f') => Kind::Float,
            Some('i') => Kind::Int,
            Some('u') => Kind::UInt,
            Some('b' | '?') => Kind::Bool,
            Some('O') => return Err(NpyError::ObjectDtype(abbreviate(descr))),
            _ => return Err(unsupported()),
        };
        let size_text = chars.as_str();
        let size = if size_text.is_empty() && rest == "?" {
            1
        } else if !size_text.is_empty() && size_text.bytes().all(|b| b.is_ascii_digit()) {
            size_text.parse::<usize>().map_err(|_| unsupported())?
        } else {
            return Err(unsupported());
        };
        let supported = match kind {
            Kind::Float => matches!(size, 2 | 4 | 8),
            Kind::Int | Kind::UInt => matches!(size, 1 | 2 | 4 | 8),
            Kind::Bool => size == 1,
        };
        if !supported {
            return Err(unsupported());
        }
        Ok(Dtype {
            kind,
            size,
            little_endian,
        })
    }

    /// Converts `data`, whose length is a multiple of `self.size`, to `f32`.
    fn convert(self, data: &[u8]) -> Vec<f32> {
        let le = self.little_endian;
        match (self.kind, self.size) {
            (Kind::Bool, _) => data.iter().map(|&b| f32::from(u8::from(b != 0))).collect(),
            (Kind::UInt, 1) => data.iter().map(|&b| f32::from(b)).collect(),
            (Kind::Int, 1) => data.iter().map(|&b| f32::from(b as i8)).collect(),
            (Kind::Float, 2) => map_items(data, |b: [u8; 2]| {
                f16_to_f32(if le {
                    u16::from_le_bytes(b)
                } else {
                    u16::from_be_bytes(b)
                })
            }),
            (Kind::Int, 2) => map_items(data, |b: [u8; 2]| {
                f32::from(if le {
                    i16::from_le_bytes(b)
                } else {
                    i16::from_be_bytes(b)
                })
            }),
            (Kind::UInt, 2) => map_items(data, |b: [u8; 2]| {
                f32::from(if le {
                    u16::from_le_bytes(b)
                } else {
                    u16::from_be_bytes(b)
                })
            }),
            (Kind::Float, 4) => map_items(data, |b: [u8; 4]| {
                if le {
                    f32::from_le_bytes(b)
                } else {
                    f32::from_be_bytes(b)
                }
            }),
            (Kind::Int, 4) => map_items(data, |b: [u8; 4]| {
                (if le {
                    i32::from_le_bytes(b)
                } else {
                    i32::from_be_bytes(b)
                }) as f32
            }),
            (Kind::UInt, 4) => map_items(data, |b: [u8; 4]| {
                (if le {
                    u32::from_le_bytes(b)
                } else {
                    u32::from_be_bytes(b)
                }) as f32
            }),
            (Kind::Float, _) => map_items(data, |b: [u8; 8]| {
                (if le {
                    f64::from_le_bytes(b)
                } else {
                    f64::from_be_bytes(b)
                }) as f32
            }),
            (Kind::Int, _) => map_items(data, |b: [u8; 8]| {
                (if le {
                    i64::from_le_bytes(b)
                } else {
                    i64::from_be_bytes(b)
                }) as f32
            }),
            (Kind::UInt, _) => map_items(data, |b: [u8; 8]| {
                (if le {
                    u64::from_le_bytes(b)
                } else {
                    u64::from_be_bytes(b)
                }) as f32
            }),
        }
    }
}

/// Applies `f` to each `N`-byte item of `data`.
fn map_items<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    let (items, rest) = data.as_chunks::<N>();
    debug_assert!(
        rest.is_empty(),
        "data length is a multiple of the item size"
    );
    items.iter().map(|&item| f(item)).collect()
}

/// Converts an IEEE 754 half-precision value to `f32` (exactly).
fn f16_to_f32(half: u16) -> f32 {
    let sign = if half & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exponent = u32::from((half >> 10) & 0x1f);
    let mantissa = u32::from(half & 0x3ff);
    match exponent {
        // Zero or subnormal: mantissa * 2^-24, exact in f32.
        0 => sign * mantissa as f32 * f32::from_bits((127 - 24) << 23),
        // Infinity or NaN, keeping the NaN payload.
        0x1f => f32::from_bits((u32::from(half & 0x8000) << 16) | 0x7f80_0000 | (mantissa << 13)),
        _ => f32::from_bits(
            (u32::from(half & 0x8000) << 16) | ((exponent + 127 - 15) << 23) | (mantissa << 13),
        ),
    }
}

/// A value in the Python literal subset used by `.npy` headers.
#[derive(Debug)]
enum Value {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<Value>),
    /// A list; its items are parsed but not kept, as no key needs them.
    List,
    Dict(Vec<Entry>),
}

impl Value {
    /// A short description of the value's type, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Bool(_) => "a bool",
            Value::None => "None",
            Value::Tuple(_) => "a tuple",
            Value::List => "a list",
            Value::Dict(_) => "a dict",
        }
    }
}

/// One `key: value` entry of a dict, with the byte span of its value.
#[derive(Debug)]
struct Entry {
    key: String,
    value: Value,
    span: (usize, usize),
}

/// A recursive-descent parser for Python literals: strings, integers,
/// `True`/`False`/`None`, tuples, lists and dicts with string keys.
struct Parser<'a> {
    text: &'a str,
    /// Byte offset of the next character; always at a char boundary.
    pos: usize,
    /// Current nesting depth of tuples, lists and dicts.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn error(&self, msg: &str) -> NpyError {
        let found = match self
            .text
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
        {
            Some(c) => format!("{c:?}"),
            None => "the end".to_owned(),
        };
        NpyError::Header(format!(
            "{msg} (found {found} at byte {} of the header)",
            self.pos
        ))
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c') = self.peek() {
            self.pos += 1;
        }
    }

    /// Parses one value, after optional whitespace.
    fn value(&mut self) -> Result<Value, NpyError> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'\'' | b'"') => self.string().map(Value::Str),
            Some(b'0'..=b'9' | b'-' | b'+') => self.integer().map(Value::Int),
            Some(b'(') => self.nested(|p| p.tuple()),
            Some(b'[') => self.nested(|p| p.sequence(b']').map(|_| Value::List)),
            Some(b'{') => self.nested(|p| p.dict()),
            Some(b'a'..=b'z' | b'A'..=b'Z' | b'_') => self.name(),
            _ => Err(self.error("expected a value")),
        }
    }

    /// Runs `f` on a bracketed value, with the nesting depth increased.
    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Value, NpyError>,
    ) -> Result<Value, NpyError> {
        if self.depth >= MAX_NESTING {
            return Err(self.error("too deeply nested"));
        }
        self.depth += 1;
        let value = f(self);
        self.depth -= 1;
        value
    }

    /// Parses `(...)`: a tuple, or a parenthesized value like `(3)`.
    fn tuple(&mut self) -> Result<Value, NpyError> {
        let (mut items, trailing_comma) = self.sequence(b')')?;
        if items.len() == 1 && !trailing_comma {
            // `(x)` is just `x` in Python; the tuple would be `(x,)`.
            if let Some(item) = items.pop() {
                return Ok(item);
            }
        }
        Ok(Value::Tuple(items))
    }

    /// Parses comma-separated values up to `close`, the opening bracket being
    /// next. Returns the values and whether a comma followed the last one.
    fn sequence(&mut self, close: u8) -> Result<(Vec<Value>, bool), NpyError> {
        self.pos += 1; // the opening bracket
        let mut items = Vec::new();
        loop {
            self.skip_whitespace();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok((items, true));
            }
            items.push(self.value()?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(c) if c == close => {
                    self.pos += 1;
                    return Ok((items, false));
                }
                _ => {
                    return Err(self.error(&format!("expected ',' or '{}'", char::from(close))));
                }
            }
        }
    }

    /// Parses `{'key': value, ...}`, the `{` being next.
    fn dict(&mut self) -> Result<Value, NpyError> {
        self.pos += 1;
        let mut entries = Vec::new();
        loop {
            self.skip_whitespace();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(Value::Dict(entries));
            }
            if !matches!(self.peek(), Some(b'\'' | b'"')) {
                return Err(self.error("expected a string key or '}'"));
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after a dict key"));
            }
            self.pos += 1;
            self.skip_whitespace();
            let start = self.pos;
            let value = self.value()?;
            entries.push(Entry {
                key,
                value,
                span: (start, self.pos),
            });
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Dict(entries));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    /// Parses a quoted string, the quote being next. Handles the common
    /// backslash escapes; others are kept as written, as Python does.
    fn string(&mut self) -> Result<String, NpyError> {
        let start = self.pos;
        let quote = self.peek();
        self.pos += 1;
        let mut out = String::new();
        let mut segment = self.pos;
        loop {
            // `segment` and `pos` are only ever at ASCII bytes (or just past
            // them), hence at char boundaries, so `get` cannot fail; it is
            // used anyway so that no input can make this panic.
            let flush = |out: &mut String, from: usize, to: usize| {
                out.push_str(self.text.get(from..to).unwrap_or_default());
            };
            match self.peek() {
                None => {
                    self.pos = start;
                    return Err(self.error("unterminated string"));
                }
                Some(b'\\') => {
                    flush(&mut out, segment, self.pos);
                    self.pos += 1;
                    let Some(c) = self
                        .text
                        .get(self.pos..)
                        .and_then(|rest| rest.chars().next())
                    else {
                        self.pos = start;
                        return Err(self.error("unterminated string"));
                    };
                    match c {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        '\\' | '\'' | '"' => out.push(c),
                        _ => {
                            out.push('\\');
                            out.push(c);
                        }
                    }
                    self.pos += c.len_utf8();
                    segment = self.pos;
                }
                Some(c) if Some(c) == quote => {
                    flush(&mut out, segment, self.pos);
                    self.pos += 1;
                    return Ok(out);
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// Parses a decimal integer with an optional sign, tolerating the `L`
    /// suffix of Python 2 longs and `_` digit separators.
    fn integer(&mut self) -> Result<i128, NpyError> {
        let start = self.pos;
        let negative = match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                true
            }
            Some(b'+') => {
                self.pos += 1;
                false
            }
            _ => false,
        };
        self.skip_whitespace();
        let mut value: i128 = 0;
        let mut digits = 0usize;
        while let Some(c @ (b'0'..=b'9' | b'_')) = self.peek() {
            if c != b'_' {
                let digit = i128::from(c - b'0');
                value = match value.checked_mul(10).and_then(|v| v.checked_add(digit)) {
                    Some(v) => v,
                    None => {
                        self.pos = start;
                        return Err(self.error("integer too large"));
                    }
                };
                digits += 1;
            }
            self.pos += 1;
        }
        if digits == 0 {
            return Err(self.error("expected digits"));
        }
        if let Some(b'L' | b'l') = self.peek() {
            self.pos += 1;
        }
        Ok(if negative { -value } else { value })
    }

    /// Parses `True`, `False` or `None`.
    fn name(&mut self) -> Result<Value, NpyError> {
        let start = self.pos;
        while let Some(b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_') = self.peek() {
            self.pos += 1;
        }
        match self.text.get(start..self.pos) {
            Some("True") => Ok(Value::Bool(true)),
            Some("False") => Ok(Value::Bool(false)),
            Some("None") => Ok(Value::None),
            _ => {
                self.pos = start;
                Err(self.error("expected True, False, None, a number, a string or a bracket"))
            }
        }
    }
}
