//! Run folders claimed by one process at a time.
//!
//! A new run claims its folder with `create_dir` (which fails when the folder exists, so two
//! runs never share one) and then holds an advisory lock on the folder's `.lock` file for as long
//! as it lives. Resuming, evaluating into, or deleting a run folder first takes the same lock; a
//! held lock is [`DataError::Busy`] naming the folder. The lock is released by the kernel when the
//! process ends, however it ends, so a killed run never leaves a stale lock behind.
//!
//! Whoever takes the lock also removes what a killed writer may have left: temporary files of
//! [`crate::record::write_atomic`], and `*.partial` (half-written) and `*.removing`
//! (half-deleted) checkpoint folders.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::record::TMP_INFIX;

/// The lock file inside a run folder.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive hold on a run folder; released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    dir: PathBuf,
}

impl RunLock {
    /// Claims a new run folder: creates it (its parents as needed) and locks it. An existing
    /// folder is an error of kind [`std::io::ErrorKind::AlreadyExists`].
    pub fn create(dir: &Path) -> Result<Self> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        }
        std::fs::create_dir(dir).map_err(|e| DataError::io(dir, e))?;
        Self::open(dir)
    }

    /// Locks an existing run folder, then removes the leftovers of a killed writer.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let file = File::options().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| DataError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(DataError::Busy(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => return Err(DataError::io(&path, e)),
        }
        let lock = RunLock { _file: file, dir: dir.to_path_buf() };
        lock.sweep()?;
        Ok(lock)
    }

    /// The locked folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes temporary files and partial checkpoint folders (in the folder and in its
    /// `checkpoints/`). Returns how many were removed.
    pub fn sweep(&self) -> Result<usize> {
        let mut removed = 0;
        for dir in [self.dir.clone(), self.dir.join("checkpoints")] {
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(kind) = e.file_type() else { continue };
                let stale_tmp = kind.is_file() && name.starts_with('.') && name.contains(TMP_INFIX);
                let partial = kind.is_dir() && name.starts_with('.') && (name.ends_with(".partial") || name.ends_with(".removing"));
                if stale_tmp {
                    std::fs::remove_file(e.path()).map_err(|err| DataError::io(e.path(), err))?;
                    removed += 1;
                } else if partial {
                    std::fs::remove_dir_all(e.path()).map_err(|err| DataError::io(e.path(), err))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Deletes a run folder, unless another process holds it ([`DataError::Busy`]).
pub fn remove_run_dir(dir: &Path) -> Result<()> {
    let lock = RunLock::open(dir)?;
    std::fs::remove_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    drop(lock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_folder_and_a_dropped_lock_is_free() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("runs/a");
        let held = RunLock::create(&dir).expect("claims");
        let e = RunLock::open(&dir).expect_err("held");
        assert!(matches!(&e, DataError::Busy(p) if p == &dir), "{e}");
        assert!(e.to_string().contains("runs/a"));
        let e = RunLock::create(&dir).expect_err("exists");
        assert!(matches!(&e, DataError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists), "{e}");
        let e = remove_run_dir(&dir).expect_err("busy");
        assert!(matches!(e, DataError::Busy(_)));
        assert!(dir.exists(), "a held folder is never deleted");
        drop(held);
        RunLock::open(&dir).expect("free after drop");
        remove_run_dir(&dir).expect("removes a free folder");
        assert!(!dir.exists());
    }

    #[test]
    fn claiming_removes_a_killed_writers_leftovers_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("run");
        std::fs::create_dir_all(dir.join("checkpoints/epoch-0001")).expect("mkdir");
        std::fs::create_dir_all(dir.join("checkpoints/.epoch-0002.partial")).expect("mkdir");
        std::fs::create_dir_all(dir.join("checkpoints/.epoch-0000.removing")).expect("mkdir");
        std::fs::write(dir.join(format!(".metrics.jsonl{TMP_INFIX}x1y2")), b"half").expect("write");
        std::fs::write(dir.join("metrics.jsonl"), b"{}\n").expect("write");
        std::fs::write(dir.join("checkpoints/epoch-0001/state.json"), b"{}").expect("write");
        let lock = RunLock::open(&dir).expect("locks");
        assert_eq!(lock.sweep().expect("sweep again"), 0, "the first sweep removed all three");
        assert!(!dir.join("checkpoints/.epoch-0002.partial").exists() && !dir.join("checkpoints/.epoch-0000.removing").exists());
        assert!(dir.join("metrics.jsonl").exists() && dir.join("checkpoints/epoch-0001/state.json").exists());
        assert_eq!(std::fs::read_dir(&dir).expect("ls").count(), 3, "metrics, checkpoints, .lock");
    }
}
