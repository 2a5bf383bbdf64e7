//! Writing secrets into the state directory: private modes from the first byte, never a
//! half-written file under the final name, and never overwriting what another process created.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Mode of private keys.
pub(crate) const PRIVATE_FILE: u32 = 0o600;
/// Mode of certificates.
pub(crate) const PUBLIC_FILE: u32 = 0o644;

/// Creates `dir` (and its parents) if missing; new directories are `0700`.
pub(crate) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// A name next to `final_path` for a temporary file or directory, unique in this process and
/// very likely across processes.
pub(crate) fn temp_sibling(final_path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(
        ".{name}.tmp-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes a new file with `mode` (it must not exist) and flushes it to disk.
pub(crate) fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Writes `contents` to `path` unless it already exists, atomically: readers see no file or the
/// whole file. Returns `false` (and writes nothing) if `path` exists, e.g. because another
/// process won the race.
pub(crate) fn create_file_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<bool> {
    let temp = temp_sibling(path);
    write_new_file(&temp, contents, mode)?;
    // A hard link fails if the target exists, unlike rename, so nobody's file is replaced.
    let linked = fs::hard_link(&temp, path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            sync_parent(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Flushes the directory entry of `path` to disk.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// Whether group or others may access `path` (a private key should be `0600`).
pub(crate) fn readable_by_others(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}
