//! Training checkpoints: parameters, optimizer state and progress in one
//! safetensors file, written atomically.
//!
//! Layout (all tensors little-endian f32):
//!
//! | tensor | holds |
//! |---|---|
//! | `param/NAME` | the parameter `NAME` (e.g. `param/c1.weight`), in its own shape |
//! | `optim/NAME/m`, `optim/NAME/v` | the optimizer state of `NAME` ([`Optimizer::state`](super::optim::Optimizer::state)) |
//!
//! and in the safetensors `__metadata__` (strings):
//!
//! | key | value |
//! |---|---|
//! | `onebit.checkpoint` | the format version, [`VERSION`] |
//! | `epoch` | epochs finished |
//! | `batch` | batches finished in the next epoch (0 at an epoch boundary) |
//! | `step` | optimizer steps so far |
//! | `seed` | the run's seed |
//! | `rng_state` | the state of a generator the loop keeps across epochs |
//! | `optim.steps` | per-parameter step counts, a JSON object |
//! | `checksum` | CRC-32 of every tensor's name, shape and bytes, in name order (hex) |
//! | `extra.KEY` | the caller's own strings ([`Checkpoint::extra`]) |
//!
//! The checksum catches bit rot and torn copies that still parse: safetensors
//! itself checks only that the header and the offsets are consistent.
//!
//! [`save`] never leaves a torn file: it writes a temporary file in the same
//! directory, flushes it to disk (`fsync`), renames it over the target (atomic
//! on POSIX file systems) and syncs the directory. A save that fails at any
//! point leaves the previous checkpoint as it was.
//!
//! Reproducible resumption: the data order and augmentation come from
//! [`derive_seed`](super::data::derive_seed)`(seed, epoch, ...)` (see
//! [`Augment::apply`](super::data::Augment::apply)), so `seed`, `epoch` and
//! `batch` restore them, and a run resumed from a checkpoint, even one taken
//! mid-epoch, computes exactly what the uninterrupted run does (tested below).
//! `rng_state` is for any other generator the loop keeps across epochs
//! (`Rng::new(rng_state)` restores a SplitMix64 whose state is `rng_state`;
//! `Rng` has no accessor for its state yet).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::ir::params::{Params, Tensor};

/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

/// A training state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// The model's parameters (only `tensors`; packed weights are not saved,
    /// training has none).
    pub params: Params,
    /// The optimizer's state tensors (`NAME/m`, `NAME/v`), as
    /// [`Optimizer::state`](super::optim::Optimizer::state) gives them; sorted
    /// by name after [`load`].
    pub optim: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// The optimizer's per-parameter step counts.
    pub optim_steps: Vec<(String, u64)>,
    /// Epochs finished.
    pub epoch: usize,
    /// Batches finished in epoch `epoch` (0 at an epoch boundary).
    pub batch: usize,
    /// Optimizer steps so far.
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// The state of a generator the loop keeps across epochs.
    pub rng_state: u64,
    /// The caller's own metadata (e.g. the model file, the optimizer
    /// configuration), stored under `extra.KEY`.
    pub extra: BTreeMap<String, String>,
}

/// Why a checkpoint cannot be saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file operation failed.
    #[error("{}: cannot {action}: {source}", .path.display())]
    Io {
        /// The file (or temporary file, or directory).
        path: PathBuf,
        /// What was being done, e.g. `"write"`.
        action: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid checkpoint.
    #[error("{}: not a valid onebit checkpoint: {message}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file is a checkpoint of another format version.
    #[error(
        "{}: checkpoint format version {found}, but this onebit reads version {VERSION}",
        .path.display()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: String,
    },
    /// The checkpoint to save is inconsistent (a shape that does not match
    /// its data); nothing was written.
    #[error("{}: cannot save checkpoint: {message}", .path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

const PARAM: &str = "param/";
const OPTIM: &str = "optim/";
const EXTRA: &str = "extra.";

/// CRC-32 over each tensor's name, shape and bytes, in name order.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>) -> u32 {
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = crc32fast::Hasher::new();
    for (name, shape, data) in sorted {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&(shape.len() as u64).to_le_bytes());
        for &d in shape {
            h.update(&(d as u64).to_le_bytes());
        }
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize()
}

/// Serialises a checkpoint to safetensors bytes.
pub fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>, String> {
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let bytes = |d: &[f32]| d.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for (name, Tensor { shape, data }) in &checkpoint.params.tensors {
        named.push((format!("{PARAM}{name}"), shape.clone(), bytes(data)));
    }
    for (name, shape, data) in &checkpoint.optim {
        named.push((format!("{OPTIM}{name}"), shape.clone(), bytes(data)));
    }
    for (name, shape, data) in &named {
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(data.len() / 4) {
            return Err(format!(
                "tensor {name} has shape {shape:?} but {} values",
                data.len() / 4
            ));
        }
    }
    let sum = checksum(
        named
            .iter()
            .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())),
    );
    let steps: BTreeMap<&str, u64> = checkpoint
        .optim_steps
        .iter()
        .map(|(n, s)| (n.as_str(), *s))
        .collect();
    let mut metadata = HashMap::from([
        ("onebit.checkpoint".to_string(), VERSION.to_string()),
        ("epoch".to_string(), checkpoint.epoch.to_string()),
        ("batch".to_string(), checkpoint.batch.to_string()),
        ("step".to_string(), checkpoint.step.to_string()),
        ("seed".to_string(), checkpoint.seed.to_string()),
        ("rng_state".to_string(), checkpoint.rng_state.to_string()),
        (
            "optim.steps".to_string(),
            serde_json::to_string(&steps).map_err(|e| e.to_string())?,
        ),
        ("checksum".to_string(), format!("{sum:08x}")),
    ]);
    for (k, v) in &checkpoint.extra {
        metadata.insert(format!("{EXTRA}{k}"), v.clone());
    }
    let mut views = Vec::with_capacity(named.len());
    for (name, shape, data) in &named {
        let view = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| format!("tensor {name}: {e}"))?;
        views.push((name.as_str(), view));
    }
    crate::io::canonical::serialize(views, metadata)
}

/// Parses checkpoint bytes; `Err` holds the message (and whether it is a
/// version mismatch, with the version found).
fn decode(bytes: &[u8]) -> Result<Checkpoint, (String, Option<String>)> {
    let plain = |m: String| (m, None);
    let file = SafeTensors::deserialize(bytes).map_err(|e| plain(format!("{e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| plain(format!("{e}")))?;
    let empty = HashMap::new();
    let meta = header.metadata().as_ref().unwrap_or(&empty);
    let get = |key: &str| -> Result<&String, (String, Option<String>)> {
        meta.get(key)
            .ok_or_else(|| plain(format!("the metadata has no '{key}'")))
    };
    let version = get("onebit.checkpoint")?;
    if version != &VERSION.to_string() {
        return Err((String::new(), Some(version.clone())));
    }
    fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, (String, Option<String>)> {
        v.parse().map_err(|_| {
            (
                format!("metadata '{key}' is '{v}', not a whole number"),
                None,
            )
        })
    }
    let mut checkpoint = Checkpoint {
        epoch: number("epoch", get("epoch")?)?,
        batch: number("batch", get("batch")?)?,
        step: number("step", get("step")?)?,
        seed: number("seed", get("seed")?)?,
        rng_state: number("rng_state", get("rng_state")?)?,
        ..Checkpoint::default()
    };
    let steps: BTreeMap<String, u64> = serde_json::from_str(get("optim.steps")?).map_err(|e| {
        plain(format!(
            "metadata 'optim.steps' is not a JSON object of counts: {e}"
        ))
    })?;
    checkpoint.optim_steps = steps.into_iter().collect();
    let expected = get("checksum")?;
    let mut views = Vec::new();
    for (name, view) in file.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(plain(format!(
                "tensor {name} is {:?}, expected F32",
                view.dtype()
            )));
        }
        views.push((name, view));
    }
    let sum = checksum(views.iter().map(|(n, v)| (*n, v.shape(), v.data())));
    if &format!("{sum:08x}") != expected {
        return Err(plain(format!(
            "checksum mismatch (stored {expected}, computed {sum:08x}): the file is corrupted"
        )));
    }
    for (name, view) in views {
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let shape = view.shape().to_vec();
        if let Some(param) = name.strip_prefix(PARAM) {
            checkpoint
                .params
                .tensors
                .insert(param.to_string(), Tensor { shape, data });
        } else if let Some(state) = name.strip_prefix(OPTIM) {
            checkpoint.optim.push((state.to_string(), shape, data));
        } else {
            return Err(plain(format!(
                "tensor {name} is neither param/NAME nor optim/NAME/..."
            )));
        }
    }
    checkpoint.optim.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in meta {
        if let Some(key) = k.strip_prefix(EXTRA) {
            checkpoint.extra.insert(key.to_string(), v.clone());
        }
    }
    Ok(checkpoint)
}

/// Loads and validates a checkpoint.
///
/// # Errors
///
/// [`CheckpointError::Io`] if the file cannot be read;
/// [`CheckpointError::Version`] for another format version;
/// [`CheckpointError::Invalid`] for anything else: not safetensors, truncated,
/// a checksum mismatch, a missing or malformed metadata field, a tensor that
/// is not f32 or not named `param/...` or `optim/...`. Never panics.
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    })?;
    decode(&bytes).map_err(|(message, version)| match version {
        Some(found) => CheckpointError::Version {
            path: path.to_path_buf(),
            found,
        },
        None => CheckpointError::Invalid {
            path: path.to_path_buf(),
            message,
        },
    })
}

/// Writes a checkpoint atomically: to a temporary file beside `path`, synced,
/// then renamed over `path`; see the [module docs](self).
///
/// # Errors
///
/// [`CheckpointError::Encode`] for an inconsistent checkpoint (nothing is
/// written), [`CheckpointError::Io`] for a failed write, sync or rename. In
/// every case an existing file at `path` is left untouched and the temporary
/// file is removed.
pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    let bytes = encode(checkpoint).map_err(|message| CheckpointError::Encode {
        path: path.to_path_buf(),
        message,
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".to_string());
    // Unique per process and call, so concurrent saves do not collide.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
    let io = |path: &Path, action: &'static str| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io {
            path,
            action,
            source,
        }
    };
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp, "create"))?;
        f.write_all(&bytes).map_err(io(&tmp, "write"))?;
        f.sync_all().map_err(io(&tmp, "sync"))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io(path, "rename the new checkpoint onto"))
    })();
    if result.is_err() {
        std::fs::remove_file(&tmp).ok();
        return result;
    }
    // Make the rename itself durable. Opening a directory for sync is not
    // possible on every platform; the data is already safe, so ignore that.
    if let Ok(d) = std::fs::File::open(&dir) {
        d.sync_all().ok();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("onebit-ckpt-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample() -> Checkpoint {
        let mut params = Params::default();
        params.tensors.insert(
            "c1.weight".into(),
            Tensor {
                shape: vec![2, 1, 3, 3],
                data: (0..18).map(|i| i as f32 * 0.5 - 3.0).collect(),
            },
        );
        params.tensors.insert(
            "y.running_var".into(),
            Tensor {
                shape: vec![2],
                data: vec![1.0, f32::MIN_POSITIVE],
            },
        );
        Checkpoint {
            params,
            optim: vec![
                ("c1.weight/m".into(), vec![18], vec![0.25; 18]),
                ("c1.weight/v".into(), vec![18], vec![1e-7; 18]),
            ],
            optim_steps: vec![("c1.weight".into(), 12345678901)],
            epoch: 7,
            batch: 3,
            step: 12345678901,
            seed: u64::MAX,
            rng_state: 0x0123_4567_89ab_cdef,
            extra: BTreeMap::from([("model".to_string(), "digits_cnn.bnn".to_string())]),
        }
    }

    #[test]
    fn round_trips() {
        let dir = temp_dir("rt");
        let p = dir.join("ck.safetensors");
        let c = sample();
        save(&p, &c).unwrap();
        assert_eq!(load(&p).unwrap(), c);
        // Overwriting works and leaves no temporary file behind.
        let mut c2 = c.clone();
        c2.epoch = 8;
        save(&p, &c2).unwrap();
        assert_eq!(load(&p).unwrap().epoch, 8);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // The parameters are a plain weight file for the rest of onebit.
        let bytes = std::fs::read(&p).unwrap();
        let (params, other) = crate::io::weights::decode(&bytes).unwrap();
        assert!(other.is_empty());
        assert!(params.tensors.contains_key("param/c1.weight"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn truncation_and_corruption_are_errors_never_panics() {
        let bytes = encode(&sample()).unwrap();
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut]);
            assert!(err.is_err(), "truncated at {cut} accepted");
        }
        // Flip each byte of the data section and of some header bytes.
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 8;
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            if i >= header {
                let (message, _) = decode(&b).unwrap_err();
                assert!(message.contains("checksum mismatch"), "{i}: {message}");
            } else {
                // A header byte may still parse (e.g. inside a string); it
                // must then either fail or decode to something, never panic.
                let _ = decode(&b);
            }
        }
        let dir = temp_dir("trunc");
        let p = dir.join("ck.safetensors");
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let err = load(&p).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: not a valid onebit checkpoint", p.display())),
            "{err}"
        );
        let err = load(&dir.join("absent")).unwrap_err().to_string();
        assert!(err.contains("absent: cannot read"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Re-serialises `bytes` with the metadata changed by `f`.
    fn with_metadata(bytes: &[u8], f: impl Fn(&mut HashMap<String, String>)) -> Vec<u8> {
        let file = SafeTensors::deserialize(bytes).unwrap();
        let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        f(&mut meta);
        let views: Vec<(String, TensorView)> = file.tensors();
        safetensors::serialize(views, Some(meta)).unwrap()
    }

    #[test]
    fn wrong_version_and_missing_fields_are_named() {
        let bytes = encode(&sample()).unwrap();
        let dir = temp_dir("meta");
        let p = dir.join("ck.safetensors");
        type Edit = Box<dyn Fn(&mut HashMap<String, String>)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|m| {
                    m.insert("onebit.checkpoint".into(), "2".into());
                }),
                "checkpoint format version 2, but this onebit reads version 1",
            ),
            (
                Box::new(|m| {
                    m.remove("onebit.checkpoint");
                }),
                "the metadata has no 'onebit.checkpoint'",
            ),
            (
                Box::new(|m| {
                    m.remove("seed");
                }),
                "the metadata has no 'seed'",
            ),
            (
                Box::new(|m| {
                    m.insert("epoch".into(), "-1".into());
                }),
                "metadata 'epoch' is '-1', not a whole number",
            ),
            (
                Box::new(|m| {
                    m.insert("optim.steps".into(), "[1]".into());
                }),
                "metadata 'optim.steps' is not a JSON object",
            ),
            (
                Box::new(|m| {
                    m.insert("checksum".into(), "00000000".into());
                }),
                "checksum mismatch",
            ),
        ];
        for (f, needle) in cases {
            std::fs::write(&p, with_metadata(&bytes, f)).unwrap();
            let err = load(&p).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(err.contains(&p.display().to_string()), "{err}");
        }
        // A plain weight file is not a checkpoint.
        let mut params = Params::default();
        params.tensors.insert(
            "w".into(),
            Tensor {
                shape: vec![1],
                data: vec![1.0],
            },
        );
        std::fs::write(&p, crate::io::weights::encode(&params, "m").unwrap()).unwrap();
        let err = load(&p).unwrap_err().to_string();
        assert!(
            err.contains("the metadata has no 'onebit.checkpoint'"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_failed_save_keeps_the_old_file() {
        let dir = temp_dir("fail");
        let p = dir.join("ck.safetensors");
        let good = sample();
        save(&p, &good).unwrap();
        // Inconsistent: nothing is written.
        let mut bad = good.clone();
        bad.optim[0].1 = vec![19];
        let err = save(&p, &bad).unwrap_err().to_string();
        assert!(
            err.contains("cannot save checkpoint: tensor optim/c1.weight/m has shape [19]"),
            "{err}"
        );
        assert_eq!(load(&p).unwrap(), good);
        // The rename fails (the target is a non-empty directory): the
        // temporary file is removed and the directory untouched.
        let target = dir.join("occupied");
        std::fs::create_dir_all(target.join("x")).unwrap();
        let err = save(&target, &good).unwrap_err().to_string();
        assert!(
            err.contains("cannot rename the new checkpoint onto"),
            "{err}"
        );
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, vec!["ck.safetensors", "occupied"]);
        // The directory does not exist: the old file elsewhere is unaffected.
        let err = save(&dir.join("no/such/dir/ck"), &good)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot create"), "{err}");
        assert_eq!(load(&p).unwrap(), good);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The support modules together, as the training loop will use them: a
    /// softmax regression on the digits (its weight treated as a latent
    /// binary weight, so clipping is exercised too), stopped mid-epoch,
    /// checkpointed, loaded and resumed, ends bit-identical to an
    /// uninterrupted run.
    #[test]
    fn a_resumed_run_repeats_an_uninterrupted_one() {
        use crate::train::data::{self, Augment, Batches, Normalize};
        use crate::train::optim::{Optimizer, OptimizerConfig, ParamKind, ParamSlot};
        use crate::train::schedule::{LrSchedule, Schedule};
        use crate::util::rng::Rng;

        let mut digits = data::digits();
        Normalize::digits().apply(&mut digits).unwrap();
        let (train, _test) = data::split(&digits, 0.5, 1);
        let (seed, batch, epochs) = (9u64, 64usize, 2usize);
        let schedule = LrSchedule {
            schedule: Schedule::Exponential { gamma: 0.5 },
            warmup: 1,
        };
        let augment = Augment {
            crop_pad: 1,
            flip: false,
        };
        let fresh = || {
            let mut params = Params::default();
            let mut rng = Rng::new(seed);
            params.tensors.insert(
                "w".into(),
                Tensor {
                    shape: vec![10, 64],
                    data: (0..640).map(|_| rng.uniform(0.1)).collect(),
                },
            );
            params.tensors.insert(
                "b".into(),
                Tensor {
                    shape: vec![10],
                    data: vec![0.0; 10],
                },
            );
            params
        };
        // One SGD step of softmax cross-entropy on batch `i` of epoch `e`.
        let step = |params: &mut Params, opt: &mut Optimizer, e: usize, i: usize| {
            let order = Batches::new(train.len(), batch, seed, e);
            let (mut x, mut y) = (Vec::new(), Vec::new());
            data::fill(&train, order.batch(i), &mut x, &mut y);
            // Per-batch generator: resuming mid-epoch needs no saved RNG state.
            let mut rng = Rng::new(data::derive_seed(seed, e as u64, 1 + i as u64));
            augment.apply(&mut x, &train.sample_shape, &mut rng);
            let w = &params.tensors["w"].data;
            let b = &params.tensors["b"].data;
            let (mut gw, mut gb) = (vec![0f32; 640], vec![0f32; 10]);
            for (s, &label) in x.chunks(64).zip(&y) {
                let z: Vec<f32> = (0..10)
                    .map(|k| b[k] + (0..64).map(|j| w[k * 64 + j] * s[j]).sum::<f32>())
                    .collect();
                let max = z.iter().cloned().fold(f32::MIN, f32::max);
                let ez: Vec<f32> = z.iter().map(|v| (v - max).exp()).collect();
                let sum: f32 = ez.iter().sum();
                for k in 0..10 {
                    let d = (ez[k] / sum - (k as u32 == label) as u32 as f32) / y.len() as f32;
                    gb[k] += d;
                    for j in 0..64 {
                        gw[k * 64 + j] += d * s[j];
                    }
                }
            }
            let mut tensors = std::mem::take(&mut params.tensors);
            {
                let mut it = tensors.iter_mut();
                let (bn, bt) = it.next().unwrap();
                let (wn, wt) = it.next().unwrap();
                let mut slots = [
                    ParamSlot {
                        name: bn,
                        value: &mut bt.data,
                        grad: &gb,
                        kind: ParamKind::Real,
                    },
                    ParamSlot {
                        name: wn,
                        value: &mut wt.data,
                        grad: &gw,
                        kind: ParamKind::LatentBinary,
                    },
                ];
                opt.step(&mut slots, schedule.factor(e)).unwrap();
            }
            params.tensors = tensors;
        };
        let config = OptimizerConfig::Adam {
            lr: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-3,
            decoupled: false,
        };
        let per_epoch = Batches::new(train.len(), batch, seed, 0).len();

        // Uninterrupted.
        let mut params = fresh();
        let mut opt = Optimizer::new(config.clone()).unwrap();
        for e in 0..epochs {
            for i in 0..per_epoch {
                step(&mut params, &mut opt, e, i);
            }
        }

        // Stopped after batch 5 of epoch 1, saved, loaded, resumed.
        let dir = temp_dir("resume");
        let path = dir.join("run.safetensors");
        let mut p2 = fresh();
        let mut o2 = Optimizer::new(config.clone()).unwrap();
        for i in 0..per_epoch {
            step(&mut p2, &mut o2, 0, i);
        }
        for i in 0..5 {
            step(&mut p2, &mut o2, 1, i);
        }
        let saved = Checkpoint {
            params: p2.clone(),
            optim: o2.state(),
            optim_steps: o2.param_steps(),
            epoch: 1,
            batch: 5,
            step: o2.step_count(),
            seed,
            rng_state: 0,
            extra: BTreeMap::new(),
        };
        save(&path, &saved).unwrap();
        drop((p2, o2));
        let c = load(&path).unwrap();
        let mut p3 = c.params.clone();
        let mut o3 = Optimizer::new(config).unwrap();
        o3.load_state(c.optim, &c.optim_steps, c.step).unwrap();
        for e in c.epoch..epochs {
            let start = if e == c.epoch { c.batch } else { 0 };
            for i in start..per_epoch {
                step(&mut p3, &mut o3, e, i);
            }
        }
        assert_eq!(p3, params, "resumed run differs");
        assert_eq!(o3.step_count(), opt.step_count());
        assert!(params.tensors["w"].data.iter().all(|v| v.abs() <= 1.0));
        // And it learnt something: training accuracy far above chance (79% here).
        let (w, b) = (&params.tensors["w"].data, &params.tensors["b"].data);
        let correct = (0..train.len())
            .filter(|&n| {
                let s = train.sample(n);
                let z = |k: usize| b[k] + (0..64).map(|j| w[k * 64 + j] * s[j]).sum::<f32>();
                let best = (0..10).max_by(|&a, &c| z(a).total_cmp(&z(c))).unwrap();
                best as u32 == train.labels[n]
            })
            .count();
        assert!(
            correct as f64 / train.len() as f64 > 0.5,
            "{correct}/{}",
            train.len()
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
