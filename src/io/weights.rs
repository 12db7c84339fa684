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
use crate::ir::param_check::{ParamError, validate};
use crate::ir::params::{PackedBits, Params, ParamsError, Tensor, graph_params, is_ignored_extra};

/// Why a weight file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file cannot be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
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
    /// The file holds values no engine accepts (a direction that is not ±1).
    #[error("{path}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The first such value.
        error: ParamError,
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

/// Reads the tensors of a safetensors buffer as f32. `f16`, `bf16` and `f64`
/// tensors are converted (exactly, or for f64 to the nearest f32) and listed
/// in the returned notes by name and dtype. Tensors of other element types
/// are returned by name with their dtype, for the caller to report.
pub fn decode(bytes: &[u8]) -> Result<(Params, Vec<(String, String)>), String> {
    let (params, other, _) = decode_converting(bytes)?;
    Ok((params, other))
}

/// [`decode`], also returning `(name, dtype)` of every converted tensor.
#[allow(clippy::type_complexity)]
fn decode_converting(
    bytes: &[u8],
) -> Result<(Params, Vec<(String, String)>, Vec<(String, String)>), String> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut params = Params::default();
    let mut other = Vec::new();
    let mut converted = Vec::new();
    for (name, view) in file.iter() {
        let dtype = format!("{:?}", view.dtype()).to_lowercase();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => (view.data().chunks_exact(2))
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            // bf16 is the top half of an f32.
            Dtype::BF16 => (view.data().chunks_exact(2))
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            Dtype::F64 => (view.data().chunks_exact(8))
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            _ => {
                other.push((name.to_string(), dtype));
                continue;
            }
        };
        if view.dtype() != Dtype::F32 {
            converted.push((name.to_string(), dtype));
        }
        params.tensors.insert(
            name.to_string(),
            Tensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    other.sort();
    converted.sort();
    Ok((params, other, converted))
}

/// IEEE 754 binary16 to f32 (exact: every f16 is an f32).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        // Subnormal: frac · 2⁻²⁴, exactly representable.
        (0, _) => {
            let v = frac as f32 * f32::powi(2.0, -24);
            return if sign == 0 { v } else { -v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// What loading a weight file noted without refusing it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadNotes {
    /// Tensors converted to f32: name and original dtype.
    pub converted: Vec<(String, String)>,
}

impl LoadNotes {
    /// One line per kind of note, for stderr; empty if there is nothing to say.
    pub fn render(&self, path: &Path) -> Vec<String> {
        if self.converted.is_empty() {
            return Vec::new();
        }
        let mut by_dtype: std::collections::BTreeMap<&str, usize> = Default::default();
        for (_, d) in &self.converted {
            *by_dtype.entry(d.as_str()).or_default() += 1;
        }
        let parts: Vec<String> = by_dtype
            .iter()
            .map(|(d, n)| format!("{n} {d} tensor{}", if *n == 1 { "" } else { "s" }))
            .collect();
        vec![format!(
            "note: {}: converted {} to f32",
            path.display(),
            parts.join(", ")
        )]
    }
}

/// Loads the parameters of `graph` from a safetensors file, checking that the
/// file holds exactly them with the right shapes and element type.
pub fn load(graph: &Graph, path: &Path) -> Result<Params, WeightsError> {
    load_with_notes(graph, path).map(|(p, _)| p)
}

/// [`load`], also returning what was converted.
pub fn load_with_notes(graph: &Graph, path: &Path) -> Result<(Params, LoadNotes), WeightsError> {
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
        path: path.into(),
        source,
    })?;
    load_bytes(graph, &bytes).map_err(|e| match e {
        BytesError::Format(message) => WeightsError::Format {
            path: path.into(),
            message,
        },
        BytesError::Mismatch(error) => WeightsError::Mismatch {
            path: path.into(),
            error,
        },
        BytesError::Invalid(error) => WeightsError::Invalid {
            path: path.into(),
            error,
        },
    })
}

/// Why a buffer does not hold a model's weights ([`load_bytes`]).
#[derive(Debug, thiserror::Error)]
pub enum BytesError {
    /// Not a safetensors buffer.
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    /// Not the model's parameters.
    #[error("{0}")]
    Mismatch(ParamsError),
    /// The model's parameters, but with values no engine accepts.
    #[error("{0}")]
    Invalid(ParamError),
}

/// [`load_with_notes`] on the bytes of a file.
pub fn load_bytes(graph: &Graph, bytes: &[u8]) -> Result<(Params, LoadNotes), BytesError> {
    let (mut params, other, converted) = decode_converting(bytes).map_err(BytesError::Format)?;
    // A model printed after `pack_weights` says `weights=packed`; its file
    // holds the weights as f32 (±1, or any latent values), packed here.
    for spec in graph_params(graph).into_iter().filter(|s| s.packed) {
        let packed = (params.tensors.get(&spec.name))
            .filter(|t| t.shape == spec.shape)
            .and_then(|t| PackedBits::pack(&t.shape, &t.data));
        if let Some(bits) = packed {
            params.tensors.remove(&spec.name);
            params.packed.insert(spec.name, bits);
        }
    }
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
            // PyTorch saves batchnorm's step counter as an int64 scalar;
            // inference does not use it.
            None if is_ignored_extra(graph, &name) => {}
            None => error.extra.push(name),
        }
    }
    if !error.is_empty() {
        return Err(BytesError::Mismatch(error));
    }
    validate(graph, &params).map_err(BytesError::Invalid)?;
    Ok((params, LoadNotes { converted }))
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

/// Encodes exactly the parameters of `graph` (as [`encode`]), so that the
/// file loads for it: after passes, that is the folded thresholds and affine
/// epilogues, the packed weights written as ±1.0 in their logical shape
/// (loading packs them again), and, after `select_cells`, only the chosen
/// alternatives' parameters.
pub fn encode_for(graph: &Graph, params: &Params) -> Result<Vec<u8>, String> {
    let mut out = Params::default();
    for spec in graph_params(graph) {
        let tensor = if spec.packed {
            let bits = (params.packed.get(&spec.name))
                .ok_or_else(|| format!("the packed weights `{}` are missing", spec.name))?;
            let signs = (bits.signs()).ok_or_else(|| {
                format!("the packed weights `{}` do not fit their shape", spec.name)
            })?;
            Tensor {
                shape: bits.shape.clone(),
                data: signs,
            }
        } else {
            (params.tensors.get(&spec.name).cloned())
                .ok_or_else(|| format!("the parameter `{}` is missing", spec.name))?
        };
        out.tensors.insert(spec.name, tensor);
    }
    encode(&out, &graph.name)
}

/// Writes parameters to a safetensors file.
pub fn save(params: &Params, model: &str, path: &Path) -> Result<(), WeightsError> {
    let bytes = encode(params, model).map_err(|message| WeightsError::Format {
        path: path.into(),
        message,
    })?;
    std::fs::write(path, bytes).map_err(|source| WeightsError::Write {
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

    /// A safetensors buffer with one tensor per `(name, dtype, shape, bytes)`.
    fn raw(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(&str, TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn loads_a_pytorch_state_dict_as_saved() {
        let g = model();
        let p = Params::init(&g, 3);
        let mut tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in &p.tensors {
            let (dtype, bytes): (Dtype, Vec<u8>) = match name.as_str() {
                // f16 and bf16 of values they hold exactly; f64 of anything.
                "c.bias" => (Dtype::F16, vec![0x00, 0x3c, 0x00, 0xc0]), // 1.0, -2.0
                "y.weight" => (Dtype::BF16, vec![0x80, 0x3f, 0x00, 0x3f]), // 1.0, 0.5
                _ => (
                    Dtype::F64,
                    t.data
                        .iter()
                        .flat_map(|&x| (x as f64).to_le_bytes())
                        .collect(),
                ),
            };
            tensors.push((name.as_str(), dtype, t.shape.clone(), bytes));
        }
        tensors.push((
            "y.num_batches_tracked",
            Dtype::I64,
            vec![],
            7i64.to_le_bytes().to_vec(),
        ));
        let (back, notes) = load_bytes(&g, &raw(&tensors)).unwrap();
        assert_eq!(back.tensors["c.bias"].data, vec![1.0, -2.0]);
        assert_eq!(back.tensors["y.weight"].data, vec![1.0, 0.5]);
        assert_eq!(back.tensors["c.weight"], p.tensors["c.weight"]);
        assert!(!back.tensors.contains_key("y.num_batches_tracked"));
        assert_eq!(
            notes.render(Path::new("w.safetensors")),
            vec![
                "note: w.safetensors: converted 1 bf16 tensor, 1 f16 tensor, 4 f64 tensors to f32"
            ]
        );
    }

    #[test]
    fn f16_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), f32::powi(2.0, -24));
        assert_eq!(f16_to_f32(0x8001), -f32::powi(2.0, -24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn other_integer_tensors_are_still_refused() {
        let g = model();
        let p = Params::init(&g, 3);
        let mut tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = p
            .tensors
            .iter()
            .filter(|(n, _)| n.as_str() != "c.bias")
            .map(|(n, t)| {
                let b = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
                (n.as_str(), Dtype::F32, t.shape.clone(), b)
            })
            .collect();
        tensors.push(("c.bias", Dtype::I64, vec![2], vec![0; 16]));
        tensors.push(("c.steps", Dtype::I64, vec![], vec![0; 8]));
        let err = load_bytes(&g, &raw(&tensors)).unwrap_err().to_string();
        assert!(
            err.contains("wrong type c.bias: expected f32, found i64"),
            "{err}"
        );
        assert!(err.contains("extra      c.steps"), "{err}");
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
