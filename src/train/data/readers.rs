//! Reading files: IDX (raw or gzip), `.npy` pairs and CSV, each into a
//! [`Dataset`] or a clear [`DataError`] naming the file.

use std::io::Read;
use std::path::Path;

use super::{DataError, Dataset, GZIP_MAGIC, MAX_CLASSES};
use crate::io::npy::{self, Array};

/// Reads a whole file, decompressing it if it starts with the gzip magic.
/// `limit` bounds the decompressed size (a gzip bomb stops there).
pub(super) fn read_maybe_gzip(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    // Multi-member, as gzip(1) writes for concatenated files.
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .take(limit)
        .read_to_end(&mut out)
        .map_err(io)?;
    Ok(out)
}

/// Element types of the IDX format: type code, size in bytes, name.
pub(super) const IDX_TYPES: [(u8, usize, &str); 6] = [
    (0x08, 1, "u8"),
    (0x09, 1, "i8"),
    (0x0B, 2, "i16"),
    (0x0C, 4, "i32"),
    (0x0D, 4, "f32"),
    (0x0E, 8, "f64"),
];

/// Reads an IDX file (the format of MNIST and Fashion-MNIST), raw or gzip.
///
/// The format: two zero bytes, a type byte (0x08 u8, 0x09 i8, 0x0B i16, 0x0C
/// i32, 0x0D f32, 0x0E f64), a rank byte, the dimensions as big-endian `u32`,
/// then the elements big-endian in C order. MNIST's images are `0x0803`
/// (u8, rank 3) and its labels `0x0801`. Values are converted to `f32`
/// (exactly, except i32 above 2²⁴ and f64).
///
/// # Errors
///
/// [`DataError`] naming the file for an unreadable file, a bad magic number,
/// a truncated header or body, or bytes after the last element.
pub fn read_idx(path: &Path) -> Result<Array, DataError> {
    // 16 GiB: more than any IDX data set, less than a gzip bomb.
    let bytes = read_maybe_gzip(path, 16 << 30)?;
    parse_idx(&bytes).map_err(|e| e.in_file(path))
}

/// An IDX format error before it is given the file's path.
pub(super) enum IdxError {
    Truncated {
        what: &'static str,
        needed: u64,
        found: u64,
    },
    Format(String),
}

impl IdxError {
    fn in_file(self, path: &Path) -> DataError {
        match self {
            IdxError::Truncated {
                what,
                needed,
                found,
            } => DataError::Truncated {
                path: path.to_path_buf(),
                what,
                needed,
                found,
            },
            IdxError::Format(message) => DataError::Format {
                path: path.to_path_buf(),
                message,
            },
        }
    }
}

pub(super) fn parse_idx(bytes: &[u8]) -> Result<Array, IdxError> {
    let found = bytes.len() as u64;
    if bytes.len() < 4 {
        return Err(IdxError::Truncated {
            what: "magic number",
            needed: 4,
            found,
        });
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let type_info = IDX_TYPES.iter().find(|t| t.0 == bytes[2]);
    let (Some(&(_, size, _)), [0, 0, _, _]) = (type_info, &bytes[..4]) else {
        return Err(IdxError::Format(format!(
            "not an IDX file: magic number 0x{magic:08x} (expected 0x00000801 for u8 \
             labels, 0x00000803 for u8 images, or another IDX type 0x08, 0x09, 0x0b, \
             0x0c, 0x0d, 0x0e in the third byte)"
        )));
    };
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(IdxError::Truncated {
            what: "header",
            needed: header as u64,
            found,
        });
    }
    let shape: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let body = shape
        .iter()
        .try_fold(size as u64, |acc, &d| acc.checked_mul(d as u64))
        .and_then(|b| b.checked_add(header as u64))
        .ok_or_else(|| IdxError::Format(format!("dimensions {shape:?} are too large")))?;
    if found < body {
        return Err(IdxError::Truncated {
            what: "data for dimensions",
            needed: body,
            found,
        });
    }
    if found > body {
        return Err(IdxError::Format(format!(
            "{} bytes after the data for dimensions {shape:?} (expected the file to end \
             at byte {body})",
            found - body
        )));
    }
    let data = &bytes[header..];
    let data: Vec<f32> = match bytes[2] {
        0x08 => data.iter().map(|&b| b as f32).collect(),
        0x09 => data.iter().map(|&b| b as i8 as f32).collect(),
        0x0B => data
            .chunks_exact(2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]) as f32)
            .collect(),
        0x0C => data
            .chunks_exact(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        0x0D => data
            .chunks_exact(4)
            .map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => data
            .chunks_exact(8)
            .map(|b| f64::from_be_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
    };
    Ok(Array { shape, data })
}

/// Writes `values` (u8) as an IDX file of the given shape, for tests and for
/// exporting small data sets. Returns the bytes; the caller writes them.
pub fn encode_idx_u8(shape: &[usize], values: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, shape.len() as u8];
    for &d in shape {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(values);
    out
}

/// Converts label values to class indices, checking that each is a
/// non-negative integer below [`MAX_CLASSES`]. Returns the labels and the
/// number of classes (largest label + 1).
pub(super) fn to_labels(path: &Path, values: &[f32]) -> Result<(Vec<u32>, usize), DataError> {
    let mut labels = Vec::with_capacity(values.len());
    let mut classes = 0;
    for (i, &v) in values.iter().enumerate() {
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                message: format!("label {i} is {v}, not an integer class index"),
            });
        }
        if v < 0.0 || v >= MAX_CLASSES as f32 {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "label {i} is {v}, out of range (expected a class index in 0..{MAX_CLASSES})"
                ),
            });
        }
        labels.push(v as u32);
        classes = classes.max(v as usize + 1);
    }
    Ok((labels, classes))
}

/// The sample shape for images stored as `[N, ...]`: a rank-3 `[N, H, W]`
/// gains a channel axis (`[1, H, W]`), as the models take C, H, W.
pub(super) fn sample_shape_of(shape: &[usize]) -> Vec<usize> {
    match shape {
        [_, h, w] => vec![1, *h, *w],
        [_, rest @ ..] => rest.to_vec(),
        [] => vec![],
    }
}

/// Puts images and labels read from two files together.
pub(super) fn pair(
    name: &str,
    images_path: &Path,
    images: Array,
    labels_path: &Path,
    labels: Array,
) -> Result<Dataset, DataError> {
    if images.shape.is_empty() {
        return Err(DataError::Format {
            path: images_path.to_path_buf(),
            message: "images must have a sample dimension first, [N, ...], not a scalar"
                .to_string(),
        });
    }
    let n = images.shape[0];
    if labels.shape.len() != 1 {
        return Err(DataError::Format {
            path: labels_path.to_path_buf(),
            message: format!(
                "labels must have shape [N], one class index per sample, not {:?}",
                labels.shape
            ),
        });
    }
    if labels.shape[0] != n {
        return Err(DataError::Mismatch {
            path: labels_path.to_path_buf(),
            message: format!(
                "{} labels, but {} has {n} images",
                labels.shape[0],
                images_path.display()
            ),
        });
    }
    let (labels, classes) = to_labels(labels_path, &labels.data)?;
    Ok(Dataset {
        name: name.to_string(),
        sample_shape: sample_shape_of(&images.shape),
        images: images.data,
        labels,
        classes,
    })
}

/// Loads an images IDX file (`[N, H, W]` becomes samples `[1, H, W]`;
/// `[N, C, H, W]` and `[N, D]` are kept) and a labels IDX file (`[N]`), raw or
/// gzip. The number of classes is the largest label + 1.
///
/// # Errors
///
/// Those of [`read_idx`], a count mismatch, or a label that is not a class index.
pub fn load_idx_pair(images: &Path, labels: &Path, name: &str) -> Result<Dataset, DataError> {
    let x = read_idx(images)?;
    let y = read_idx(labels)?;
    pair(name, images, x, labels, y)
}

/// Loads an images `.npy` (`[N, ...]`; `[N, H, W]` becomes samples `[1, H, W]`)
/// and a labels `.npy` (`[N]`, integer values). Any numeric dtype is read
/// (see [`crate::io::npy`]). The data set is named after the images file's stem.
///
/// # Errors
///
/// Those of [`npy::read_file`], a count mismatch, or a label that is not a
/// class index.
pub fn load_npy_pair(images: &Path, labels: &Path) -> Result<Dataset, DataError> {
    let x = npy::read_file(images)?;
    let y = npy::read_file(labels)?;
    let name = images
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    pair(&name, images, x, labels, y)
}

/// Which CSV column holds the label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelColumn {
    /// The first field (MNIST-in-CSV conventions).
    First,
    /// The last field (scikit-learn's `digits.csv.gz`).
    Last,
}

/// Reads a CSV file (raw or gzip): one sample per line, `prod(sample_shape)`
/// numbers and a label, separated by commas. Blank lines are skipped, and so
/// is a first line that is not all numbers (a header). The data set is named
/// after the file's stem.
///
/// # Errors
///
/// [`DataError`] naming the file and line for a line with the wrong number of
/// fields, a field that is not a number, or a label that is not a class index.
pub fn read_csv(
    path: &Path,
    label_column: LabelColumn,
    sample_shape: &[usize],
) -> Result<Dataset, DataError> {
    // 16 GiB, as for IDX.
    let bytes = read_maybe_gzip(path, 16 << 30)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        message: format!("not a text file: {e}"),
    })?;
    let per_sample: usize = sample_shape.iter().product();
    let fields = per_sample + 1;
    let format = |line: usize, message: String| DataError::Format {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    let mut images = Vec::new();
    let mut label_values = Vec::new();
    let mut row = Vec::with_capacity(fields);
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        row.clear();
        let mut bad = None;
        for (column, field) in line.split(',').enumerate() {
            match field.trim().parse::<f32>() {
                Ok(v) => row.push(v),
                Err(_) => {
                    bad = Some((column + 1, field.trim()));
                    break;
                }
            }
        }
        if let Some((column, field)) = bad {
            if number == 1 {
                continue; // a header line
            }
            return Err(format(
                number,
                format!("field {column} is '{field}', not a number"),
            ));
        }
        if row.len() != fields {
            return Err(format(
                number,
                format!(
                    "{} fields, expected {fields} ({per_sample} values for a sample of shape \
                     {sample_shape:?} and a label)",
                    row.len()
                ),
            ));
        }
        let (label, values) = match label_column {
            LabelColumn::First => (row[0], &row[1..]),
            LabelColumn::Last => (row[per_sample], &row[..per_sample]),
        };
        if label.fract() != 0.0 || !(0.0..MAX_CLASSES as f32).contains(&label) {
            return Err(format(
                number,
                format!("label '{label}' is not a class index (an integer in 0..{MAX_CLASSES})"),
            ));
        }
        images.extend_from_slice(values);
        label_values.push(label);
    }
    let (labels, classes) = to_labels(path, &label_values)?;
    Ok(Dataset {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().trim_end_matches(".csv").to_string())
            .unwrap_or_default(),
        sample_shape: sample_shape.to_vec(),
        images,
        labels,
        classes,
    })
}
