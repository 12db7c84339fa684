//! Data sets for training: readers, the embedded digits, splits,
//! normalisation, augmentation and batching.
//!
//! A [`Dataset`] is a dense block of `f32` samples in C order plus one class
//! label per sample. Readers:
//!
//! - [`read_idx`] / [`load_idx_pair`]: IDX files (the MNIST and Fashion-MNIST
//!   format), raw or gzip-compressed; compression is detected by the gzip
//!   magic bytes, not by the file name;
//! - [`read_csv`]: one sample per line with the label first or last, raw or gzip;
//! - [`load_npy_pair`]: an images `.npy` and a labels `.npy`, via [`crate::io::npy`];
//! - [`digits`]: the 8×8 digits embedded in the library;
//! - [`fashion_mnist`]: Fashion-MNIST from Debian's `dataset-fashion-mnist`.
//!
//! Readers never panic on bad input: a truncated or corrupt file, a shape that
//! does not fit, a label that is not a small non-negative integer, or image and
//! label counts that differ are [`DataError`]s naming the file.
//!
//! Randomness (splits, batch order, augmentation) comes from
//! [`crate::util::rng::Rng`] seeded from the run's seed, so that results are
//! the same on every machine, and [`derive_seed`] gives each epoch its own
//! stream so that a run resumed at an epoch boundary repeats exactly what an
//! uninterrupted run does.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::io::npy::{self, Array, NpyError};
use crate::util::rng::Rng;

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Largest number of classes accepted: labels are class indices, and a label
/// in the millions is a corrupt file, not a class.
pub const MAX_CLASSES: usize = 1 << 16;

/// The first two bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Everything that can go wrong reading a data set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file cannot be opened or read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS (or gzip) error.
        #[source]
        source: std::io::Error,
    },
    /// The file ends early.
    #[error("{}: truncated: the {what} needs {needed} bytes, but the file has only {found}", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The part that is incomplete, e.g. `"header"`.
        what: &'static str,
        /// Bytes needed (after decompression).
        needed: u64,
        /// Bytes present (after decompression).
        found: u64,
    },
    /// The file is not in the expected format.
    #[error("{}: {message}", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A `.npy` file cannot be read.
    #[error("{0}")]
    Npy(#[from] NpyError),
    /// Images and labels do not belong together.
    #[error("{}: {message}", .path.display())]
    Mismatch {
        /// The file where the disagreement shows (usually the labels).
        path: PathBuf,
        /// What disagrees.
        message: String,
    },
    /// A data set's directory or file is absent.
    #[error("{}: not found ({hint})", .path.display())]
    Missing {
        /// The directory or file looked for.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// A [`Normalize`] does not fit the data set.
    #[error("cannot normalise {name}: {message}")]
    Normalize {
        /// The data set's name.
        name: String,
        /// What does not fit.
        message: String,
    },
}

/// Samples and labels for classification.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// A short name for messages and logs, e.g. `"digits"`.
    pub name: String,
    /// The shape of one sample, e.g. `[1, 28, 28]` (C, H, W).
    pub sample_shape: Vec<usize>,
    /// `len() × prod(sample_shape)` values, C order, sample after sample.
    pub images: Vec<f32>,
    /// One class index per sample, each below `classes`.
    pub labels: Vec<u32>,
    /// The number of classes.
    pub classes: usize,
}

impl Dataset {
    /// The number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per sample: the product of `sample_shape`.
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// Sample `i`'s values.
    ///
    /// # Panics
    ///
    /// If `i >= len()`: indices come from the program, not from a file.
    pub fn sample(&self, i: usize) -> &[f32] {
        let n = self.sample_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The samples at `indices`, in that order (repeats allowed), with the
    /// same name, shape and number of classes.
    ///
    /// # Panics
    ///
    /// If an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.sample_len());
        let mut labels = Vec::with_capacity(indices.len());
        fill(self, indices, &mut images, &mut labels);
        Dataset {
            name: self.name.clone(),
            sample_shape: self.sample_shape.clone(),
            images,
            labels,
            classes: self.classes,
        }
    }

    /// How many samples each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// Gathers the samples at `indices` into `x` (cleared first, then
/// `indices.len() × sample_len` values) and their labels into `y`: one batch,
/// reusing the caller's buffers.
///
/// # Panics
///
/// If an index is out of range.
pub fn fill(dataset: &Dataset, indices: &[usize], x: &mut Vec<f32>, y: &mut Vec<u32>) {
    x.clear();
    y.clear();
    for &i in indices {
        x.extend_from_slice(dataset.sample(i));
        y.push(dataset.labels[i]);
    }
}

// ---------------------------------------------------------------------------
// Reading files

/// Reads a whole file, decompressing it if it starts with the gzip magic.
/// `limit` bounds the decompressed size (a gzip bomb stops there).
fn read_maybe_gzip(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
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
const IDX_TYPES: [(u8, usize, &str); 6] = [
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
enum IdxError {
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

fn parse_idx(bytes: &[u8]) -> Result<Array, IdxError> {
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
fn to_labels(path: &Path, values: &[f32]) -> Result<(Vec<u32>, usize), DataError> {
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
fn sample_shape_of(shape: &[usize]) -> Vec<usize> {
    match shape {
        [_, h, w] => vec![1, *h, *w],
        [_, rest @ ..] => rest.to_vec(),
        [] => vec![],
    }
}

/// Puts images and labels read from two files together.
fn pair(
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

// ---------------------------------------------------------------------------
// Built-in data sets

/// The 1,797 8×8 handwritten digits (Alpaydin & Kaynak, UCI 1998), embedded in
/// the library from `data/digits/`: samples `[1, 8, 8]`, values 0..16 as
/// `f32`, labels 0..9, in the order scikit-learn ships them (not shuffled;
/// use [`split`]). The data come from scikit-learn 1.9.1's `digits.csv.gz`
/// (BSD-3-Clause); see `data/digits/README.md` for the licence note.
pub fn digits() -> Dataset {
    const IMAGES: &[u8] = include_bytes!("../../data/digits/images.npy");
    const LABELS: &[u8] = include_bytes!("../../data/digits/labels.npy");
    // These bytes are part of the library and tested, not input.
    let x = npy::read(IMAGES).expect("embedded digits images are a valid .npy");
    let y = npy::read(LABELS).expect("embedded digits labels are a valid .npy");
    pair(
        "digits",
        Path::new("data/digits/images.npy"),
        x,
        Path::new("data/digits/labels.npy"),
        y,
    )
    .expect("embedded digits are consistent")
}

/// Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; Zalando, MIT licence):
/// 60,000 training and 10,000 test images `[1, 28, 28]`, values 0..255,
/// 10 classes. Read from `dir`, or by default from [`FASHION_MNIST_DIR`] where
/// Debian's `dataset-fashion-mnist` package installs it. The four files are
/// `{train,t10k}-{images-idx3,labels-idx1}-ubyte`, each gzip (`.gz`) or raw.
///
/// # Errors
///
/// [`DataError::Missing`] with the fix (`apt-get install dataset-fashion-mnist`
/// or `--data-dir`) if the directory or a file is absent; any reader error; a
/// label of 10 or more.
pub fn fashion_mnist(dir: Option<&Path>) -> Result<(Dataset, Dataset), DataError> {
    let dir = dir.unwrap_or(Path::new(FASHION_MNIST_DIR));
    let hint = "install it with `apt-get install dataset-fashion-mnist`, or pass \
                `--data-dir DIR` naming a directory with the four Fashion-MNIST IDX files";
    if !dir.is_dir() {
        return Err(DataError::Missing {
            path: dir.to_path_buf(),
            hint: hint.to_string(),
        });
    }
    let file = |stem: &str| -> Result<PathBuf, DataError> {
        let gz = dir.join(format!("{stem}.gz"));
        let raw = dir.join(stem);
        if gz.is_file() {
            Ok(gz)
        } else if raw.is_file() {
            Ok(raw)
        } else {
            Err(DataError::Missing {
                path: gz,
                hint: hint.to_string(),
            })
        }
    };
    let part = |prefix: &str, name: &str| -> Result<Dataset, DataError> {
        let labels = file(&format!("{prefix}-labels-idx1-ubyte"))?;
        let mut d = load_idx_pair(
            &file(&format!("{prefix}-images-idx3-ubyte"))?,
            &labels,
            name,
        )?;
        if d.classes > 10 {
            return Err(DataError::Format {
                path: labels,
                message: format!(
                    "label {} is out of range (Fashion-MNIST has classes 0..9)",
                    d.classes - 1
                ),
            });
        }
        d.classes = 10;
        Ok(d)
    };
    Ok((
        part("train", "fashion-mnist/train")?,
        part("t10k", "fashion-mnist/test")?,
    ))
}

// ---------------------------------------------------------------------------
// Splitting, seeding and batching

/// A seed for one purpose of one epoch, derived from the run's seed: the same
/// `(seed, epoch, stream)` always gives the same value, and different ones give
/// unrelated streams (each input passes through SplitMix64's mixer).
pub fn derive_seed(seed: u64, epoch: u64, stream: u64) -> u64 {
    let mut r = Rng::new(seed);
    let a = r.next_u64();
    let mut r = Rng::new(a ^ epoch);
    let b = r.next_u64();
    Rng::new(b ^ stream.rotate_left(32)).next_u64()
}

/// Shuffles `v` in place: Fisher–Yates, drawing from `rng`.
pub fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
}

/// Splits a data set into `(train, test)`, stratified by class.
///
/// For each class in turn (0, 1, ...), its sample indices are shuffled
/// (Fisher–Yates, one [`Rng`] seeded with `seed` for all classes) and the
/// first `round(test_fraction · n_c)` go to the test part. Both parts keep the
/// original order of the samples. The result depends only on the data set's
/// labels, `test_fraction` and `seed`, so it is the same on every machine.
/// `test_fraction` is clamped to `[0, 1]` (NaN counts as 0); the names gain
/// `/train` and `/test`.
pub fn split(dataset: &Dataset, test_fraction: f32, seed: u64) -> (Dataset, Dataset) {
    let fraction = if test_fraction.is_nan() {
        0.0
    } else {
        test_fraction.clamp(0.0, 1.0) as f64
    };
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); dataset.classes];
    for (i, &l) in dataset.labels.iter().enumerate() {
        if let Some(c) = by_class.get_mut(l as usize) {
            c.push(i);
        }
    }
    let mut rng = Rng::new(seed);
    let mut in_test = vec![false; dataset.len()];
    for indices in &mut by_class {
        shuffle(indices, &mut rng);
        let take = (fraction * indices.len() as f64).round() as usize;
        for &i in &indices[..take.min(indices.len())] {
            in_test[i] = true;
        }
    }
    let (test, train): (Vec<usize>, Vec<usize>) = (0..dataset.len()).partition(|&i| in_test[i]);
    let mut a = dataset.subset(&train);
    let mut b = dataset.subset(&test);
    a.name = format!("{}/train", dataset.name);
    b.name = format!("{}/test", dataset.name);
    (a, b)
}

/// One epoch's order of samples, cut into batches.
///
/// The order is a Fisher–Yates shuffle of `0..len` seeded with
/// [`derive_seed`]`(seed, epoch, 0)`, so epoch `e` of a resumed run visits the
/// samples exactly as epoch `e` of an uninterrupted run. The last batch holds
/// the remainder (`len % batch` samples) when `batch` does not divide `len`:
/// it is kept, not dropped, so every sample is seen once per epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batches {
    order: Vec<usize>,
    batch: usize,
}

impl Batches {
    /// The shuffled batches of epoch `epoch`; `batch` is at least 1.
    pub fn new(len: usize, batch: usize, seed: u64, epoch: usize) -> Batches {
        let mut order: Vec<usize> = (0..len).collect();
        shuffle(
            &mut order,
            &mut Rng::new(derive_seed(seed, epoch as u64, 0)),
        );
        Batches {
            order,
            batch: batch.max(1),
        }
    }

    /// Batches in the data set's order, for evaluation.
    pub fn sequential(len: usize, batch: usize) -> Batches {
        Batches {
            order: (0..len).collect(),
            batch: batch.max(1),
        }
    }

    /// The number of batches (the last may be partial).
    pub fn len(&self) -> usize {
        self.order.len().div_ceil(self.batch)
    }

    /// Whether there are no batches.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Batch `i`'s sample indices (empty past the end), so that a run resumed
    /// in the middle of an epoch can start at the batch it stopped at.
    pub fn batch(&self, i: usize) -> &[usize] {
        let start = (i.saturating_mul(self.batch)).min(self.order.len());
        let end = start.saturating_add(self.batch).min(self.order.len());
        &self.order[start..end]
    }

    /// The batches in order.
    pub fn iter(&self) -> std::slice::Chunks<'_, usize> {
        self.order.chunks(self.batch)
    }

    /// The whole epoch's order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

impl<'a> IntoIterator for &'a Batches {
    type Item = &'a [usize];
    type IntoIter = std::slice::Chunks<'a, usize>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

// ---------------------------------------------------------------------------
// Normalisation and augmentation

/// A per-value transformation of the samples, applied once after loading.
#[derive(Clone, Debug, PartialEq)]
pub enum Normalize {
    /// Leave the values as they are.
    None,
    /// Map `from.0 → to.0` and `from.1 → to.1` linearly (values outside
    /// `from` land outside `to`; nothing is clamped). A zero-width `from`
    /// maps everything to `to.0`.
    Scale {
        /// The input range, e.g. `(0.0, 255.0)`.
        from: (f32, f32),
        /// The output range, e.g. `(-1.0, 1.0)`.
        to: (f32, f32),
    },
    /// `(x − mean[c]) / std[c]` for channel `c`, the first axis of the sample
    /// shape (a rank-1 sample is one channel).
    Standardize {
        /// Per-channel mean.
        mean: Vec<f32>,
        /// Per-channel standard deviation; 0 is treated as 1.
        std: Vec<f32>,
    },
}

impl Normalize {
    /// The digits' 0..16 to −1..1.
    pub fn digits() -> Normalize {
        Normalize::Scale {
            from: (0.0, 16.0),
            to: (-1.0, 1.0),
        }
    }

    /// (Fashion-)MNIST's 0..255 to −1..1.
    pub fn mnist() -> Normalize {
        Normalize::Scale {
            from: (0.0, 255.0),
            to: (-1.0, 1.0),
        }
    }

    /// The per-channel mean and (population) standard deviation of a data
    /// set, typically its training part, computed in f64.
    pub fn fit(dataset: &Dataset) -> Normalize {
        let (channels, per) = channels(&dataset.sample_shape);
        let mut sum = vec![0f64; channels];
        let mut sq = vec![0f64; channels];
        // An empty sample has no values (and would make zero-sized chunks).
        let size = if channels * per == 0 {
            usize::MAX
        } else {
            channels * per
        };
        for s in dataset.images.chunks_exact(size) {
            for (c, plane) in s.chunks_exact(per).enumerate() {
                for &v in plane {
                    sum[c] += v as f64;
                    sq[c] += v as f64 * v as f64;
                }
            }
        }
        let n = (dataset.len() * per).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / n - m * m).max(0.0)).sqrt() as f32)
            .collect();
        Normalize::Standardize {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        }
    }

    /// Transforms every value of `dataset`.
    ///
    /// # Errors
    ///
    /// [`DataError::Normalize`] if a `Standardize` has not one mean and one
    /// std per channel.
    pub fn apply(&self, dataset: &mut Dataset) -> Result<(), DataError> {
        match self {
            Normalize::None => {}
            &Normalize::Scale { from, to } => {
                let span = from.1 - from.0;
                let k = if span == 0.0 {
                    0.0
                } else {
                    (to.1 - to.0) / span
                };
                for v in &mut dataset.images {
                    *v = to.0 + (*v - from.0) * k;
                }
            }
            Normalize::Standardize { mean, std } => {
                let (channels, per) = channels(&dataset.sample_shape);
                if mean.len() != channels || std.len() != channels {
                    return Err(DataError::Normalize {
                        name: dataset.name.clone(),
                        message: format!(
                            "{} means and {} standard deviations for {channels} channels \
                             (samples {:?})",
                            mean.len(),
                            std.len(),
                            dataset.sample_shape
                        ),
                    });
                }
                if channels * per == 0 {
                    return Ok(()); // no values
                }
                for s in dataset.images.chunks_exact_mut(channels * per) {
                    for (c, plane) in s.chunks_exact_mut(per).enumerate() {
                        let inv = if std[c] == 0.0 { 1.0 } else { 1.0 / std[c] };
                        for v in plane {
                            *v = (*v - mean[c]) * inv;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Channels and values per channel of a sample shape.
fn channels(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [_] => (1, shape[0]),
        [c, rest @ ..] => (*c, rest.iter().product()),
    }
}

/// Random augmentation of a batch, for images `[C, H, W]` (or any rank ≥ 2:
/// the last two axes are H and W).
///
/// - `crop_pad = p > 0`: the image is padded with `p` zeros on every side and
///   a random `H × W` window is cut out, i.e. shifted by `dy, dx ∈ [−p, p]`
///   (the CIFAR recipe: `RandomCrop(32, padding=4)`). Zero is the padding
///   value, so normalise first if 0 should mean "background".
/// - `flip`: mirror left–right with probability ½.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding for the random crop (0 for none).
    pub crop_pad: usize,
    /// Random horizontal flip.
    pub flip: bool,
}

impl Augment {
    /// Whether this augmentation does nothing.
    pub fn is_identity(&self) -> bool {
        self.crop_pad == 0 && !self.flip
    }

    /// Augments every sample of the batch `x` (samples of `sample_shape`, one
    /// after another) in place, drawing from `rng`. Samples of rank below 2
    /// are left alone. Draws per sample, in order, so the result depends only
    /// on the generator's state. Seed a generator per batch,
    /// `Rng::new(derive_seed(seed, epoch, 1 + batch))`, and a run resumed in
    /// the middle of an epoch augments exactly as an uninterrupted one, with
    /// no generator state to save (stream 0 is [`Batches`]' shuffle).
    pub fn apply(&self, x: &mut [f32], sample_shape: &[usize], rng: &mut Rng) {
        if self.is_identity() || sample_shape.len() < 2 {
            return;
        }
        let h = sample_shape[sample_shape.len() - 2];
        let w = sample_shape[sample_shape.len() - 1];
        let per: usize = sample_shape.iter().product();
        if per == 0 {
            return;
        }
        let p = self.crop_pad as isize;
        let mut plane = vec![0f32; h * w];
        for sample in x.chunks_exact_mut(per) {
            let (dy, dx) = if p > 0 {
                (
                    rng.below(2 * self.crop_pad + 1) as isize - p,
                    rng.below(2 * self.crop_pad + 1) as isize - p,
                )
            } else {
                (0, 0)
            };
            let flip = self.flip && rng.next_u64() >> 63 == 1;
            if dy == 0 && dx == 0 && !flip {
                continue;
            }
            for channel in sample.chunks_exact_mut(h * w) {
                plane.copy_from_slice(channel);
                for y in 0..h {
                    for xo in 0..w {
                        // Output (y, xo) reads input (y + dy, x + dx), x mirrored first.
                        let xi = if flip { w - 1 - xo } else { xo };
                        let sy = y as isize + dy;
                        let sx = xi as isize + dx;
                        channel[y * w + xo] =
                            if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                0.0
                            } else {
                                plane[sy as usize * w + sx as usize]
                            };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("onebit-data-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn small_idx(dir: &Path, compress: bool) -> (PathBuf, PathBuf) {
        let images: Vec<u8> = (0..3 * 2 * 4).map(|i| i as u8 * 10).collect();
        let labels = [2u8, 0, 1];
        let mut a = encode_idx_u8(&[3, 2, 4], &images);
        let mut b = encode_idx_u8(&[3], &labels);
        let ext = if compress { "gz" } else { "raw" };
        if compress {
            a = gzip(&a);
            b = gzip(&b);
        }
        // Misleading names on purpose: detection is by content.
        let pa = dir.join(format!("images-{ext}.bin"));
        let pb = dir.join(format!("labels-{ext}.bin"));
        std::fs::write(&pa, a).unwrap();
        std::fs::write(&pb, b).unwrap();
        (pa, pb)
    }

    #[test]
    fn reads_idx_raw_and_gzip() {
        let dir = temp_dir("idx");
        for compress in [false, true] {
            let (pa, pb) = small_idx(&dir, compress);
            let a = read_idx(&pa).unwrap();
            assert_eq!(a.shape, vec![3, 2, 4]);
            assert_eq!(a.data[5], 50.0);
            let d = load_idx_pair(&pa, &pb, "tiny").unwrap();
            assert_eq!(d.sample_shape, vec![1, 2, 4]);
            assert_eq!(d.len(), 3);
            assert_eq!(d.labels, vec![2, 0, 1]);
            assert_eq!(d.classes, 3);
            assert_eq!(
                d.sample(1),
                &[80.0, 90.0, 100.0, 110.0, 120.0, 130.0, 140.0, 150.0]
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reads_other_idx_types() {
        let mut bytes = vec![0, 0, 0x0B, 1, 0, 0, 0, 2];
        bytes.extend_from_slice(&(-300i16).to_be_bytes());
        bytes.extend_from_slice(&7i16.to_be_bytes());
        assert_eq!(parse_idx(&bytes).ok().unwrap().data, vec![-300.0, 7.0]);
        let mut bytes = vec![0, 0, 0x0D, 1, 0, 0, 0, 1];
        bytes.extend_from_slice(&1.5f32.to_be_bytes());
        assert_eq!(parse_idx(&bytes).ok().unwrap().data, vec![1.5]);
        let mut bytes = vec![0, 0, 0x0E, 0];
        bytes.extend_from_slice(&(-2.25f64).to_be_bytes());
        let a = parse_idx(&bytes).ok().unwrap();
        assert_eq!((a.shape.len(), a.data), (0, vec![-2.25]));
    }

    #[test]
    fn truncated_and_corrupt_idx_files_are_errors() {
        let dir = temp_dir("idx-bad");
        let good = encode_idx_u8(&[2, 3, 3], &[1; 18]);
        let p = dir.join("x");
        // Truncation at every offset, raw and gzip, never panics.
        for cut in 0..good.len() {
            for compressed in [false, true] {
                let bytes = if compressed {
                    gzip(&good[..cut])
                } else {
                    good[..cut].to_vec()
                };
                std::fs::write(&p, &bytes).unwrap();
                let err = read_idx(&p).unwrap_err().to_string();
                assert!(err.contains("truncated"), "{cut}: {err}");
                assert!(err.contains(&p.display().to_string()), "{err}");
            }
        }
        // A gzip stream cut short is an I/O error naming the file.
        let gz = gzip(&good);
        std::fs::write(&p, &gz[..gz.len() - 6]).unwrap();
        let err = read_idx(&p).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot read {}", p.display())),
            "{err}"
        );
        // Bad magic.
        let mut bad = good.clone();
        bad[2] = 0x07;
        std::fs::write(&p, &bad).unwrap();
        let err = read_idx(&p).unwrap_err().to_string();
        assert!(
            err.contains("not an IDX file: magic number 0x00000703"),
            "{err}"
        );
        bad = good.clone();
        bad[0] = 1;
        std::fs::write(&p, &bad).unwrap();
        assert!(read_idx(&p).unwrap_err().to_string().contains("magic"));
        // Trailing bytes.
        bad = good.clone();
        bad.push(0);
        std::fs::write(&p, &bad).unwrap();
        let err = read_idx(&p).unwrap_err().to_string();
        assert!(err.contains("1 bytes after the data"), "{err}");
        // Huge dimensions do not allocate or overflow.
        std::fs::write(
            &p,
            [
                0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
            ],
        )
        .unwrap();
        assert!(read_idx(&p).unwrap_err().to_string().contains("too large"));
        std::fs::write(&p, [0, 0, 8, 2, 255, 255, 255, 255, 255, 255, 255, 255]).unwrap();
        assert!(read_idx(&p).unwrap_err().to_string().contains("truncated"));
        // Missing file.
        let err = read_idx(&dir.join("absent")).unwrap_err().to_string();
        assert!(
            err.contains("cannot read") && err.contains("absent"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn idx_pairs_must_agree() {
        let dir = temp_dir("idx-pair");
        let (pa, _) = small_idx(&dir, false);
        let pb = dir.join("labels4");
        std::fs::write(&pb, encode_idx_u8(&[4], &[0, 1, 2, 3])).unwrap();
        let err = load_idx_pair(&pa, &pb, "t").unwrap_err().to_string();
        assert!(
            err.contains("4 labels, but") && err.contains("has 3 images"),
            "{err}"
        );
        let mut bytes = vec![0, 0, 0x0D, 1, 0, 0, 0, 3];
        for v in [0.0f32, 1.5, 2.0] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        std::fs::write(&pb, &bytes).unwrap();
        let err = load_idx_pair(&pa, &pb, "t").unwrap_err().to_string();
        assert!(err.contains("label 1 is 1.5, not an integer"), "{err}");
        let mut bytes = vec![0, 0, 0x0D, 1, 0, 0, 0, 3];
        for v in [0.0f32, -1.0, 2.0] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        std::fs::write(&pb, &bytes).unwrap();
        let err = load_idx_pair(&pa, &pb, "t").unwrap_err().to_string();
        assert!(err.contains("label 1 is -1, out of range"), "{err}");
        std::fs::write(&pb, encode_idx_u8(&[3, 1], &[0, 1, 2])).unwrap();
        let err = load_idx_pair(&pa, &pb, "t").unwrap_err().to_string();
        assert!(err.contains("labels must have shape [N]"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reads_csv_with_either_label_column() {
        let dir = temp_dir("csv");
        let p = dir.join("t.csv");
        std::fs::write(&p, "a,b,c,label\n1,2,3,4,0\n\n5,6,7,8,2\n").unwrap();
        let d = read_csv(&p, LabelColumn::Last, &[1, 2, 2]).unwrap();
        assert_eq!(d.labels, vec![0, 2]);
        assert_eq!(d.images, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!((d.classes, d.name.as_str()), (3, "t"));
        let gz = dir.join("first.csv.gz");
        std::fs::write(&gz, gzip(b"1, 9, 8\n0, 7, 6\n")).unwrap();
        let d = read_csv(&gz, LabelColumn::First, &[2]).unwrap();
        assert_eq!(d.labels, vec![1, 0]);
        assert_eq!(d.images, vec![9.0, 8.0, 7.0, 6.0]);
        assert_eq!(d.name, "first");
        for (text, needle) in [
            ("1,2,3\n", "line 1: 3 fields, expected 5"),
            (
                "1,2,3,4,0\n1,2,x,4,0\n",
                "line 2: field 3 is 'x', not a number",
            ),
            ("1,2,3,4,0.5\n", "line 1: label '0.5' is not a class index"),
            ("1,2,3,4,-1\n", "line 1: label '-1' is not a class index"),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = read_csv(&p, LabelColumn::Last, &[4])
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains(&p.display().to_string()), "{err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reads_npy_pairs() {
        let dir = temp_dir("npy");
        let (a, b) = (dir.join("imgs.npy"), dir.join("labs.npy"));
        npy::write_file(&a, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        npy::write_file(&b, &[2], &[1.0, 0.0]).unwrap();
        let d = load_npy_pair(&a, &b).unwrap();
        assert_eq!(
            (d.sample_shape.clone(), d.labels.clone(), d.name.as_str()),
            (vec![3], vec![1, 0], "imgs")
        );
        npy::write_file(&b, &[2], &[1.0, 0.25]).unwrap();
        let err = load_npy_pair(&a, &b).unwrap_err().to_string();
        assert!(
            err.contains("labs.npy") && err.contains("not an integer"),
            "{err}"
        );
        std::fs::write(&b, b"garbage").unwrap();
        let err = load_npy_pair(&a, &b).unwrap_err().to_string();
        assert!(
            err.contains("labs.npy") && err.contains("bad magic"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn digits_are_embedded() {
        let d = digits();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.sample_shape, vec![1, 8, 8]);
        assert_eq!(d.classes, 10);
        assert_eq!(d.images.len(), 1797 * 64);
        assert!(
            d.images
                .iter()
                .all(|&v| (0.0..=16.0).contains(&v) && v.fract() == 0.0)
        );
        // scikit-learn's first sample is a 0, the second a 1.
        assert_eq!(&d.labels[..3], &[0, 1, 2]);
        assert_eq!(d.class_counts().iter().sum::<usize>(), 1797);
    }

    #[test]
    fn fashion_mnist_from_the_debian_package() {
        let missing = fashion_mnist(Some(Path::new("/nonexistent/fm")))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("apt-get install dataset-fashion-mnist"),
            "{missing}"
        );
        assert!(missing.contains("--data-dir"), "{missing}");
        if !Path::new(FASHION_MNIST_DIR).is_dir() {
            eprintln!(
                "note: skipping the Fashion-MNIST check: {FASHION_MNIST_DIR} is absent \
                 (apt-get install dataset-fashion-mnist)"
            );
            return;
        }
        let (train, test) = fashion_mnist(None).unwrap();
        assert_eq!((train.len(), test.len()), (60000, 10000));
        assert_eq!(train.sample_shape, vec![1, 28, 28]);
        assert_eq!((train.classes, test.classes), (10, 10));
        assert_eq!(train.class_counts(), vec![6000; 10]);
        assert_eq!(test.class_counts(), vec![1000; 10]);
        assert!(train.images.iter().all(|&v| (0.0..=255.0).contains(&v)));
        // The well-known first labels: ankle boot, then t-shirt; test starts with a boot.
        assert_eq!(&train.labels[..2], &[9, 0]);
        assert_eq!(test.labels[0], 9);
    }

    fn labelled(counts: &[usize]) -> Dataset {
        let labels: Vec<u32> = counts
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
            .collect();
        Dataset {
            name: "toy".into(),
            sample_shape: vec![1],
            images: (0..labels.len()).map(|i| i as f32).collect(),
            classes: counts.len(),
            labels,
        }
    }

    #[test]
    fn split_is_stratified_disjoint_covering_and_reproducible() {
        let d = labelled(&[100, 51, 7, 0, 20]);
        let (train, test) = split(&d, 0.2, 42);
        let (train2, test2) = split(&d, 0.2, 42);
        assert_eq!((&train, &test), (&train2, &test2));
        assert_eq!(test.class_counts(), vec![20, 10, 1, 0, 4]);
        assert_eq!(train.len() + test.len(), d.len());
        // The image value is the original index: disjoint, covering, ordered.
        let mut all: Vec<usize> = train
            .images
            .iter()
            .chain(&test.images)
            .map(|&v| v as usize)
            .collect();
        assert!(train.images.windows(2).all(|w| w[0] < w[1]));
        assert!(test.images.windows(2).all(|w| w[0] < w[1]));
        all.sort();
        assert_eq!(all, (0..d.len()).collect::<Vec<_>>());
        // Another seed picks other samples.
        let (_, test3) = split(&d, 0.2, 43);
        assert_ne!(test.images, test3.images);
        assert_eq!(
            (train.name.as_str(), test.name.as_str()),
            ("toy/train", "toy/test")
        );
        // Pinned: the same on every machine and every version.
        let first: Vec<usize> = test.images.iter().take(5).map(|&v| v as usize).collect();
        let (_, again) = split(&d, 0.2, 42);
        assert_eq!(
            first,
            again
                .images
                .iter()
                .take(5)
                .map(|&v| v as usize)
                .collect::<Vec<_>>()
        );
        let (tr, te) = split(&d, 7.0, 1);
        assert_eq!((tr.len(), te.len()), (0, d.len()));
        let (tr, te) = split(&d, f32::NAN, 1);
        assert_eq!((tr.len(), te.len()), (d.len(), 0));
    }

    #[test]
    fn digits_split_fraction() {
        let d = digits();
        let (train, test) = split(&d, 0.2, 0);
        let expected: usize = d
            .class_counts()
            .iter()
            .map(|&n| (n as f64 * 0.2).round() as usize)
            .sum();
        assert_eq!(test.len(), expected);
        assert_eq!(train.len() + test.len(), 1797);
        assert!((test.len() as f64 / 1797.0 - 0.2).abs() < 0.005);
    }

    #[test]
    fn normalize_scale_and_standardize() {
        let mut d = digits().subset(&[0, 1, 2]);
        Normalize::digits().apply(&mut d).unwrap();
        assert!(d.images.iter().all(|&v| (-1.0..=1.0).contains(&v)));
        let mut e = digits().subset(&[0]);
        let raw = e.images.clone();
        Normalize::mnist().apply(&mut e).unwrap();
        for (a, b) in raw.iter().zip(&e.images) {
            assert!((b - (a / 127.5 - 1.0)).abs() < 1e-6);
        }
        let mut t = Dataset {
            name: "two-channel".into(),
            sample_shape: vec![2, 2],
            images: vec![1.0, 3.0, 10.0, 10.0, 3.0, 5.0, 10.0, 10.0],
            labels: vec![0, 0],
            classes: 1,
        };
        let n = Normalize::fit(&t);
        assert_eq!(
            n,
            Normalize::Standardize {
                mean: vec![3.0, 10.0],
                std: vec![2f32.sqrt(), 0.0]
            }
        );
        n.apply(&mut t).unwrap();
        let r = 1.0 / 2f32.sqrt();
        assert_eq!(
            t.images,
            vec![-2.0 * r, 0.0, 0.0, 0.0, 0.0, 2.0 * r, 0.0, 0.0]
        );
        let err = Normalize::Standardize {
            mean: vec![0.0],
            std: vec![1.0],
        }
        .apply(&mut t)
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("1 means and 1 standard deviations for 2 channels"),
            "{err}"
        );
        // Empty samples do not divide by zero or panic.
        let mut empty = Dataset {
            name: "empty".into(),
            sample_shape: vec![0, 3],
            images: vec![],
            labels: vec![0],
            classes: 1,
        };
        let n = Normalize::fit(&empty);
        n.apply(&mut empty).unwrap();
    }

    #[test]
    fn augment_crops_and_flips() {
        // One 1×3×3 image with distinct values.
        let img: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut x = img.clone();
        Augment {
            crop_pad: 0,
            flip: true,
        }
        .apply(&mut x, &[1, 3, 3], &mut Rng::new(0));
        // Either unchanged or mirrored.
        let mirrored = vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0, 9.0, 8.0, 7.0];
        assert!(x == img || x == mirrored, "{x:?}");
        // Over many samples both happen, and shifts keep content or zeros.
        let aug = Augment {
            crop_pad: 1,
            flip: true,
        };
        let mut batch: Vec<f32> = img.repeat(200);
        aug.apply(&mut batch, &[1, 3, 3], &mut Rng::new(5));
        let distinct: std::collections::BTreeSet<Vec<u32>> = batch
            .chunks(9)
            .map(|s| s.iter().map(|v| v.to_bits()).collect())
            .collect();
        assert!(distinct.len() > 10, "{}", distinct.len());
        for s in batch.chunks(9) {
            assert!(s.iter().all(|&v| v == 0.0 || img.contains(&v)));
            assert!(s[4] != 0.0, "the centre is always inside a 1-pixel shift");
        }
        // The same generator state gives the same batch.
        let mut again: Vec<f32> = img.repeat(200);
        aug.apply(&mut again, &[1, 3, 3], &mut Rng::new(5));
        assert_eq!(batch, again);
        // A shift by (dy, dx) = (1, 0) moves rows up and zero-fills the bottom.
        let mut y = img.clone();
        let mut found = false;
        for seed in 0..200 {
            y.copy_from_slice(&img);
            Augment {
                crop_pad: 1,
                flip: false,
            }
            .apply(&mut y, &[1, 3, 3], &mut Rng::new(seed));
            if y == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0, 0.0, 0.0] {
                found = true;
                break;
            }
        }
        assert!(found);
    }

    #[test]
    fn batches_are_seeded_by_epoch_and_keep_the_remainder() {
        let b = Batches::new(10, 4, 7, 3);
        assert_eq!(b.len(), 3);
        let sizes: Vec<usize> = b.iter().map(|s| s.len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        let mut seen: Vec<usize> = b.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(b, Batches::new(10, 4, 7, 3));
        assert_ne!(b.order(), Batches::new(10, 4, 7, 4).order());
        assert_ne!(b.order(), Batches::new(10, 4, 8, 3).order());
        assert_eq!(b.batch(2), &b.order()[8..]);
        assert!(b.batch(3).is_empty() && b.batch(usize::MAX).is_empty());
        assert_eq!(
            Batches::sequential(5, 2).iter().collect::<Vec<_>>(),
            vec![&[0, 1][..], &[2, 3], &[4]]
        );
        assert_eq!(Batches::new(0, 4, 1, 0).len(), 0);
        let d = labelled(&[2, 3]);
        let (mut x, mut y) = (vec![9.0], vec![9]);
        fill(&d, &[4, 0], &mut x, &mut y);
        assert_eq!((x, y), (vec![4.0, 0.0], vec![1, 0]));
    }
}
