//! Weight files: parameters in safetensors format, by PyTorch's names.
//!
//! A file written by `safetensors.torch.save_file(model.state_dict(), ...)` for
//! the same architecture loads directly: names and layouts follow PyTorch (see
//! `crate::ir::params`). Loading checks the file against the model and reports
//! every missing, extra, misshapen and wrongly typed parameter in one error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::ir::graph::Graph;
use crate::ir::params::{Params, ParamsError, Tensor};

/// Why a weight file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a safetensors file.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the safetensors reader said.
        message: String,
    },
    /// The file does not hold the model's parameters.
    #[error("{path}: {error}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        error: ParamsError,
    },
}

/// Reads the f32 tensors of a safetensors buffer. Tensors of other element
/// types are returned by name with their dtype, for the caller to report.
pub fn decode(bytes: &[u8]) -> Result<(Params, Vec<(String, String)>), String> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut params = Params::default();
    let mut other = Vec::new();
    for (name, view) in file.iter() {
        if view.dtype() != Dtype::F32 {
            other.push((
                name.to_string(),
                format!("{:?}", view.dtype()).to_lowercase(),
            ));
            continue;
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        params.tensors.insert(
            name.to_string(),
            Tensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    other.sort();
    Ok((params, other))
}

/// Loads the parameters of `graph` from a safetensors file, checking that the
/// file holds exactly them with the right shapes and element type.
pub fn load(graph: &Graph, path: &Path) -> Result<Params, WeightsError> {
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
        path: path.into(),
        source,
    })?;
    let (mut params, other) = decode(&bytes).map_err(|message| WeightsError::Format {
        path: path.into(),
        message,
    })?;
    let mut error = match params.check(graph) {
        Ok(()) => ParamsError::default(),
        Err(e) => e,
    };
    for (name, dtype) in other {
        match error.missing.iter().position(|(m, _)| *m == name) {
            Some(i) => {
                error.missing.remove(i);
                error.wrong_dtype.push((name, dtype));
            }
            None => error.extra.push(name),
        }
    }
    if error.is_empty() {
        Ok(params)
    } else {
        Err(WeightsError::Mismatch {
            path: path.into(),
            error,
        })
    }
}

/// Encodes parameters as a safetensors buffer (little-endian f32), with
/// `format: pt` metadata so PyTorch tooling accepts it.
pub fn encode(params: &Params, model: &str) -> Result<Vec<u8>, String> {
    let bytes: Vec<(&String, Vec<u8>, &Vec<usize>)> = params
        .tensors
        .iter()
        .map(|(name, t)| {
            (
                name,
                t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                &t.shape,
            )
        })
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (name, data, shape) in &bytes {
        let view = TensorView::new(Dtype::F32, shape.to_vec(), data)
            .map_err(|e| format!("{name}: {e}"))?;
        views.push((name.as_str(), view));
    }
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("onebit.model".to_string(), model.to_string()),
    ]);
    super::canonical::serialize(views, metadata)
}

/// Writes parameters to a safetensors file.
pub fn save(params: &Params, model: &str, path: &Path) -> Result<(), WeightsError> {
    let bytes = encode(params, model).map_err(|message| WeightsError::Format {
        path: path.into(),
        message,
    })?;
    std::fs::write(path, bytes).map_err(|source| WeightsError::Io {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::parse_str;

    fn model() -> Graph {
        parse_str("model m { input x: f32[1, 4, 4]\n c = conv2d(x, 2, kernel=3)\n y = batchnorm(c)\n output y }").unwrap()
    }

    #[test]
    fn round_trips_through_bytes() {
        let g = model();
        let p = Params::init(&g, 7);
        let (back, other) = decode(&encode(&p, "m").unwrap()).unwrap();
        assert!(other.is_empty());
        assert_eq!(back, p);
    }

    #[test]
    fn names_every_problem_at_once() {
        let g = model();
        let mut p = Params::init(&g, 7);
        p.tensors.remove("c.bias");
        p.tensors.get_mut("c.weight").unwrap().shape = vec![2, 1, 9];
        p.tensors.insert(
            "c.extra".into(),
            Tensor {
                shape: vec![1],
                data: vec![0.0],
            },
        );
        p.tensors.insert(
            "y.num_batches_tracked".into(),
            Tensor {
                shape: vec![],
                data: vec![3.0],
            },
        );
        let dir = std::env::temp_dir().join(format!("onebit-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        save(&p, "m", &path).unwrap();
        let err = load(&g, &path).unwrap_err().to_string();
        assert!(err.contains("missing    c.bias: f32[2]"), "{err}");
        assert!(
            err.contains("misshapen  c.weight: expected f32[2, 1, 3, 3], found [2, 1, 9]"),
            "{err}"
        );
        assert!(err.contains("extra      c.extra"), "{err}");
        assert!(!err.contains("num_batches_tracked"), "{err}");
        assert!(err.contains("(3 problems)"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
