//! The built-in data sets: the embedded 8×8 digits and Fashion-MNIST from
//! Debian's `dataset-fashion-mnist`.

use std::path::{Path, PathBuf};

use super::readers::{load_idx_pair, pair};
use super::{DataError, Dataset, FASHION_MNIST_DIR};
use crate::io::npy;

/// The 1,797 8×8 handwritten digits (Alpaydin & Kaynak, UCI 1998), embedded in
/// the library from `data/digits/`: samples `[1, 8, 8]`, values 0..16 as
/// `f32`, labels 0..9, in the order scikit-learn ships them (not shuffled;
/// use [`split`]). The data come from scikit-learn 1.9.1's `digits.csv.gz`
/// (BSD-3-Clause); see `data/digits/README.md` for the licence note.
pub fn digits() -> Dataset {
    const IMAGES: &[u8] = include_bytes!("../../../data/digits/images.npy");
    const LABELS: &[u8] = include_bytes!("../../../data/digits/labels.npy");
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
