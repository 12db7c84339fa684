//! Output files that are never destructive.
//!
//! A command first claims every path it will write ([`Outputs::claim`]):
//! a path that is one of its inputs, or that another output already claimed,
//! is refused before anything is computed or written. Contents are then
//! staged in temporary files beside their destinations, and
//! [`Outputs::commit`] renames them all into place at the end. A command
//! that fails before the commit leaves every existing file as it was: the
//! staged files are removed when [`Outputs`] is dropped.

use std::path::{Path, PathBuf};

use super::Failure;

/// A file's identity: its canonical path, and device and inode when it
/// exists (so a hard link or a second spelling of a path is the same file).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    path: PathBuf,
    inode: Option<(u64, u64)>,
}

impl Identity {
    fn of(path: &Path) -> Identity {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        // A file that does not exist yet: its directory's canonical path
        // and its name.
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let dir = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
            match path.file_name() {
                Some(name) => dir.join(name),
                None => dir,
            }
        });
        Identity {
            path: canonical,
            inode,
        }
    }

    fn same(&self, other: &Identity) -> bool {
        self.path == other.path || (self.inode.is_some() && self.inode == other.inode)
    }
}

/// The outputs of one command.
pub struct Outputs {
    inputs: Vec<(PathBuf, Identity, &'static str)>,
    claimed: Vec<(PathBuf, Identity, &'static str)>,
    /// (temporary file, destination)
    staged: Vec<(PathBuf, PathBuf)>,
}

impl Outputs {
    /// Outputs of a command that reads `inputs`, each with what it is
    /// (`"model"`, `"weights"`, …).
    pub fn reading<'a>(inputs: impl IntoIterator<Item = (&'a Path, &'static str)>) -> Outputs {
        Outputs {
            inputs: inputs
                .into_iter()
                .map(|(p, what)| (p.to_path_buf(), Identity::of(p), what))
                .collect(),
            claimed: Vec::new(),
            staged: Vec::new(),
        }
    }

    /// Claims `path` for the output `what` (e.g. `"-o"`, `"--header"`).
    pub fn claim(&mut self, path: &Path, what: &'static str) -> Result<(), Failure> {
        let id = Identity::of(path);
        if let Some((input, _, kind)) = self.inputs.iter().find(|(_, i, _)| i.same(&id)) {
            return Err(Failure(format!(
                "error: {what} {} is the {kind} file {}; refusing to overwrite an input (nothing was written)",
                path.display(),
                input.display()
            )));
        }
        if let Some((other, _, kind)) = self.claimed.iter().find(|(_, i, _)| i.same(&id)) {
            return Err(Failure(format!(
                "error: {what} {} is also the {kind} output {}; give each output its own file (nothing was written)",
                path.display(),
                other.display()
            )));
        }
        if id.path.is_dir() {
            return Err(Failure(format!(
                "error: cannot write {}: it is a directory",
                path.display()
            )));
        }
        self.claimed.push((path.to_path_buf(), id, what));
        Ok(())
    }

    /// Stages `bytes` for the claimed `path`, in a temporary file beside it.
    pub fn write(&mut self, path: &Path, bytes: &[u8]) -> Result<(), Failure> {
        debug_assert!(self.claimed.iter().any(|(p, _, _)| p == path));
        let name = path
            .file_name()
            .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
        let temp = path.with_file_name(format!(
            ".{name}.onebit-{}-{}.tmp",
            std::process::id(),
            self.staged.len()
        ));
        std::fs::write(&temp, bytes).map_err(|e| cannot_write(path, &e))?;
        self.staged.push((temp, path.to_path_buf()));
        Ok(())
    }

    /// Renames every staged file into place.
    pub fn commit(mut self) -> Result<(), Failure> {
        for (temp, path) in std::mem::take(&mut self.staged) {
            if let Err(e) = std::fs::rename(&temp, &path) {
                let _ = std::fs::remove_file(&temp);
                return Err(cannot_write(&path, &e));
            }
        }
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for (temp, _) in &self.staged {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// The one wording of a failed write.
pub fn cannot_write(path: &Path, e: &std::io::Error) -> Failure {
    Failure(format!("error: cannot write {}: {e}", path.display()))
}
