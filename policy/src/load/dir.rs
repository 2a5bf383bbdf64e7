//! Reading a policy directory as a hostile input.
//!
//! Whoever can add a file to the policy directory (a merged pull request, a mounted volume)
//! must not be able to make the reader leak another file, block, or run out of memory. The
//! rules, each refused or skipped with a diagnostic that names the file and never its content:
//!
//! - Only `*.yaml` and `*.yml` entries are looked at; hidden entries (`.git`) and other names
//!   are ignored, and directories are walked without following symbolic links to them.
//! - A regular file is read. A FIFO, socket or device is **skipped with a warning**: it cannot
//!   hold policy, and opening a FIFO would block the reader forever.
//! - A symbolic link is followed only if its target, fully resolved, is **inside the
//!   directory** (a Kubernetes ConfigMap volume is made of such links, through `..data`) and is
//!   a regular file. A link that leads outside (`x.yaml -> /etc/shadow`, `-> /dev/zero`) or
//!   nowhere is **an error**: the file is never opened, and the set is refused, since leaving
//!   out a file that was meant to be policy would change what is enforced.
//! - Files are opened with `O_NONBLOCK | O_NOFOLLOW` and checked again on the open descriptor
//!   (a file swapped for a FIFO or a link after the check is still refused), and read through
//!   a bound: at most [`MAX_FILE_BYTES`] + 1 bytes are ever read from one file, and the whole
//!   set may hold at most [`MAX_TOTAL_BYTES`].

use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ReadError, SourceFile, is_policy_file};
use crate::diagnostic::{Diagnostic, Location};

/// The largest policy file read: policy files are small, and a huge one is a mistake (or an
/// attack on the controller).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// The most text a whole policy directory may hold.
pub const MAX_TOTAL_BYTES: u64 = 8 * 1024 * 1024;

/// What a policy directory holds: the files that could be read, and every problem with the
/// others (errors refuse the set; warnings say what was skipped).
#[derive(Clone, Debug, Default)]
pub struct PolicySources {
    /// The policy files read, in a stable order.
    pub files: Vec<SourceFile>,
    /// Files refused or skipped, each pointing at the file.
    pub diagnostics: Vec<Diagnostic>,
}

impl PolicySources {
    /// Whether a file was refused (as opposed to skipped).
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// One directory entry that names a policy file, before it is read.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The path as found (under the directory as given).
    pub path: PathBuf,
    /// What to open: the path itself, or a link's resolved target.
    pub open: PathBuf,
    /// The entry's own metadata (not following links).
    pub entry: Metadata,
    /// What `open` is (following links), if it could be resolved.
    pub target: Result<Metadata, Problem>,
}

/// Why a file is not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A FIFO, socket or device, or a link inside the directory to one: skipped.
    NotRegular(String),
    /// A link whose target is outside the directory.
    LinkLeaves,
    /// A link that points nowhere (or cannot be resolved).
    LinkBroken(String),
    /// Over [`MAX_FILE_BYTES`].
    TooLarge,
    /// Not UTF-8.
    NotUtf8,
    /// Another I/O error.
    Io(String),
}

impl Problem {
    fn diagnostic(&self, path: &Path, dir: &Path) -> Diagnostic {
        let name = path.display();
        let dir = dir.display();
        let d = match self {
            Problem::NotRegular(what) => Diagnostic::warning(
                "not-a-regular-file",
                format!("{name} is {what}, not a regular file; skipped"),
            )
            .help("policy files must be regular files; remove it from the policy directory"),
            Problem::LinkLeaves => Diagnostic::error(
                "symlink-outside",
                format!("{name} is a symbolic link to a file outside {dir}; it was not read"),
            )
            .help(format!(
                "copy the file into {dir} instead, or point the link at a file inside it"
            )),
            Problem::LinkBroken(why) => Diagnostic::error(
                "symlink-broken",
                format!("{name} is a symbolic link that cannot be followed: {why}"),
            )
            .help("fix or remove the link"),
            Problem::TooLarge => Diagnostic::error(
                "file-too-large",
                format!(
                    "{name} is larger than {MAX_FILE_BYTES} bytes, the most a policy file may be"
                ),
            )
            .help("split it into several files; policy files are normally a few KiB"),
            Problem::NotUtf8 => Diagnostic::error("not-utf8", format!("{name} is not UTF-8 text"))
                .help("save it as UTF-8"),
            Problem::Io(why) => {
                Diagnostic::error("unreadable", format!("cannot read {name}: {why}"))
                    .help("check the file's permissions")
            }
        };
        d.at(Some(Location {
            file: Arc::from(path),
            line: 1,
            column: 1,
        }))
    }
}

fn kind_of(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_dir() {
        Some("a directory")
    } else {
        Some("not a file")
    }
}

/// Lists the entries under `path` that name policy files (or `path` itself, if it is not a
/// directory), in a stable order, with their metadata. Nothing is opened: this is what the
/// controller's watcher runs on every poll to tell whether anything changed.
pub fn scan(path: &Path) -> Result<Vec<Candidate>, ReadError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ReadError::Io { path: p, source }
    };
    // The path given is the operator's choice: follow it if it is a link.
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if !meta.is_dir() {
        let target = match kind_of(&meta) {
            None => Ok(meta.clone()),
            Some(what) => Err(Problem::NotRegular(what.to_owned())),
        };
        return Ok(vec![Candidate {
            path: path.to_path_buf(),
            open: path.to_path_buf(),
            entry: meta,
            target,
        }]);
    }
    let root = std::fs::canonicalize(path).map_err(io(path))?;
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = entry.path();
            // Not following links: a link to a directory is not walked.
            let meta = std::fs::symlink_metadata(&p).map_err(io(&p))?;
            if meta.is_dir() {
                stack.push(p);
                continue;
            }
            if !is_policy_file(&p) {
                continue;
            }
            let (open, target) = if meta.file_type().is_symlink() {
                resolve_link(&p, &root)
            } else {
                let target = match kind_of(&meta) {
                    None => Ok(meta.clone()),
                    Some(what) => Err(Problem::NotRegular(what.to_owned())),
                };
                (p.clone(), target)
            };
            out.push(Candidate {
                path: p,
                open,
                entry: meta,
                target,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Where a link leads, if it may be read: fully resolved, inside `root`, a regular file.
fn resolve_link(link: &Path, root: &Path) -> (PathBuf, Result<Metadata, Problem>) {
    let target = match std::fs::canonicalize(link) {
        Ok(t) => t,
        Err(e) => return (link.to_path_buf(), Err(Problem::LinkBroken(e.to_string()))),
    };
    if !target.starts_with(root) {
        return (target, Err(Problem::LinkLeaves));
    }
    // `symlink_metadata` of a canonical path: the path has no links left in it.
    let checked = match std::fs::symlink_metadata(&target) {
        Ok(meta) => match kind_of(&meta) {
            None => Ok(meta),
            Some(what) => Err(Problem::NotRegular(format!("a symbolic link to {what}"))),
        },
        Err(e) => Err(Problem::LinkBroken(e.to_string())),
    };
    (target, checked)
}

/// Reads one regular file without blocking and without reading more than the bound.
fn read_bounded(path: &Path) -> Result<String, Problem> {
    let io = |e: std::io::Error| Problem::Io(e.to_string());
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO swapped in after the check must not block the open; a link swapped in must
        // not be followed.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Problem::LinkBroken("it was replaced by a link while being read".into())
            } else {
                io(e)
            }
        })?;
    let meta = file.metadata().map_err(io)?;
    if let Some(what) = kind_of(&meta) {
        return Err(Problem::NotRegular(what.to_owned()));
    }
    let mut bytes = Vec::new();
    // One byte more than allowed tells "too large" without trusting the size in the
    // metadata (which `/proc` files, among others, get wrong).
    Read::take(&file, MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Problem::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| Problem::NotUtf8)
}

/// Reads the candidates `scan` found, by the rules in the module docs.
pub fn read_candidates(root: &Path, candidates: Vec<Candidate>) -> PolicySources {
    let mut out = PolicySources::default();
    let mut total = 0u64;
    for c in candidates {
        let read = c.target.and_then(|meta| {
            if meta.len() > MAX_FILE_BYTES {
                return Err(Problem::TooLarge);
            }
            read_bounded(&c.open)
        });
        match read {
            Ok(text) => {
                total += text.len() as u64;
                if total > MAX_TOTAL_BYTES {
                    out.diagnostics.push(
                        Diagnostic::error(
                            "policy-too-large",
                            format!(
                                "the policy files hold more than {MAX_TOTAL_BYTES} bytes; {} and the files after it were not read",
                                c.path.display()
                            ),
                        )
                        .at(Some(Location {
                            file: Arc::from(c.path.as_path()),
                            line: 1,
                            column: 1,
                        }))
                        .help("policy sets are normally well under 1 MiB; look for a file that does not belong"),
                    );
                    break;
                }
                out.files.push(SourceFile {
                    path: Arc::from(c.path.as_path()),
                    text,
                });
            }
            Err(problem) => out.diagnostics.push(problem.diagnostic(&c.path, root)),
        }
    }
    out
}

/// Reads every policy file under `path` (or `path` itself if it is a file) by the rules in the
/// module docs. An error here means the directory itself could not be read, or holds no
/// policy file at all; problems with single files are diagnostics in the result.
pub fn read_policy_dir(path: &Path) -> Result<PolicySources, ReadError> {
    let candidates = scan(path)?;
    if candidates.is_empty() {
        return Err(ReadError::NoPolicyFiles {
            path: path.to_path_buf(),
        });
    }
    Ok(read_candidates(path, candidates))
}

/// A cheap fingerprint of what [`scan`] found: paths, sizes, times, inodes, types and link
/// targets. If it is unchanged, so (almost certainly) are the contents; the controller's
/// watcher rereads the contents only when it changes, and once in a while regardless.
pub fn fingerprint(candidates: &[Candidate]) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let stat = |m: &Metadata, h: &mut std::collections::hash_map::DefaultHasher| {
        (m.dev(), m.ino(), m.mode(), m.size()).hash(h);
        (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()).hash(h);
    };
    for c in candidates {
        c.path.hash(&mut h);
        c.open.hash(&mut h);
        stat(&c.entry, &mut h);
        match &c.target {
            Ok(m) => stat(m, &mut h),
            Err(p) => format!("{p:?}").hash(&mut h),
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEAM: &str =
        "apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: { name: shop }\nspec: {}\n";

    fn codes(s: &PolicySources) -> Vec<&'static str> {
        s.diagnostics.iter().map(|d| d.code).collect()
    }

    #[test]
    fn links_inside_are_read_and_links_outside_are_refused_unread()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("policy");
        std::fs::create_dir_all(dir.join("..data"))?;
        std::fs::write(dir.join("..data/team.yaml"), TEAM)?;
        // The shape of a Kubernetes ConfigMap volume.
        std::os::unix::fs::symlink("..data/team.yaml", dir.join("team.yaml"))?;
        let read = read_policy_dir(&dir)?;
        assert_eq!(read.files.len(), 1, "{:?}", read.diagnostics);
        assert!(read.diagnostics.is_empty());

        std::fs::write(tmp.path().join("secret.yaml"), "root:$6$SECRET\n")?;
        std::os::unix::fs::symlink("../secret.yaml", dir.join("leak.yaml"))?;
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml"))?;
        std::os::unix::fs::symlink("nowhere.yaml", dir.join("dangling.yaml"))?;
        let read = read_policy_dir(&dir)?;
        assert_eq!(read.files.len(), 1);
        assert_eq!(
            codes(&read),
            ["symlink-broken", "symlink-outside", "symlink-outside"]
        );
        let all = format!("{:?}", read.diagnostics);
        assert!(!all.contains("SECRET"), "{all}");
        Ok(())
    }

    #[test]
    fn fifos_and_sockets_are_skipped_without_blocking() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        std::fs::write(tmp.path().join("team.yaml"), TEAM)?;
        let fifo = tmp.path().join("pipe.yaml");
        nix_mkfifo(&fifo)?;
        let _socket = std::os::unix::net::UnixListener::bind(tmp.path().join("sock.yaml"))?;
        // A link to the FIFO, inside the directory, is skipped the same way.
        std::os::unix::fs::symlink("pipe.yaml", tmp.path().join("via-link.yaml"))?;
        let read = read_policy_dir(tmp.path())?;
        assert_eq!(read.files.len(), 1);
        assert_eq!(codes(&read), ["not-a-regular-file"; 3]);
        assert!(!read.has_errors(), "skipped, not refused");
        let messages: Vec<&str> = read
            .diagnostics
            .iter()
            .map(|d| d.message.as_str())
            .collect();
        assert!(
            messages[0].ends_with("pipe.yaml is a FIFO (named pipe), not a regular file; skipped"),
            "{messages:?}"
        );
        assert!(
            messages[2].contains("via-link.yaml is a symbolic link to a FIFO"),
            "{messages:?}"
        );
        // Opening the FIFO itself (a swap after the check) does not block either.
        assert_eq!(
            read_bounded(&fifo),
            Err(Problem::NotRegular("a FIFO (named pipe)".into()))
        );
        Ok(())
    }

    #[test]
    fn reads_stop_one_byte_past_the_limit() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let big = tmp.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; (MAX_FILE_BYTES + 10) as usize])?;
        assert_eq!(read_bounded(&big), Err(Problem::TooLarge));
        let read = read_policy_dir(tmp.path())?;
        assert_eq!(codes(&read), ["file-too-large"]);
        Ok(())
    }

    fn nix_mkfifo(path: &Path) -> std::io::Result<()> {
        let status = std::process::Command::new("mkfifo").arg(path).status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other("mkfifo failed"))
        }
    }
}
