//! Writing an access grant where policy lives: one new file per grant in the policy directory
//! (`grants/<caller>-to-<callee>[-n].yaml`), checked together with the rest of the policy
//! before it is written, written atomically, and committed when the directory is in a git work
//! tree. Review drafts become a branch (`sluice/access-<id>`) built with git plumbing and a
//! private index, so the user's working tree, index and current branch are never touched.
//!
//! The portal never rewrites a file it did not create: a grant is a new file, and an existing
//! name gets a `-2`, `-3`… suffix. The controller's policy watcher picks the file up like any
//! other change.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::SystemTime;

use sluice_policy::PolicySet;
use sluice_policy::diagnostic::{Style, render};
use sluice_policy::load::{SourceFile, read_sources};
use sluice_policy::validate::{LoadError, ObjectRef};

use super::User;

/// The directory (under the policy directory) grants are written to.
pub const GRANTS_DIR: &str = "grants";

/// Why a grant could not be planned or applied.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The policy with the grant added does not validate.
    #[error("the grant would make the policy invalid:\n{0}")]
    Invalid(String),
    /// The policy directory cannot be read.
    #[error("cannot read the policy directory: {0}")]
    Read(String),
    /// A file operation failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What.
        action: String,
        /// Why.
        source: std::io::Error,
    },
    /// git refused.
    #[error("git {command} failed: {stderr}")]
    Git {
        /// The subcommand.
        command: String,
        /// What git said.
        stderr: String,
    },
}

/// What to grant.
#[derive(Clone, Debug)]
pub struct Grant<'a> {
    /// The caller.
    pub caller: &'a ObjectRef,
    /// The callee.
    pub callee: &'a ObjectRef,
    /// The endpoints.
    pub rpcs: &'a [String],
    /// The requester's reason (empty: a default naming the requester).
    pub reason: &'a str,
    /// `shared` or `copy`.
    pub ephemeral: &'a str,
    /// Who asked.
    pub requester: &'a User,
    /// The request's id.
    pub request_id: i64,
    /// When it was asked.
    pub at: SystemTime,
}

/// A grant file, ready to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Relative to the policy directory, `/`-separated.
    pub file: String,
    /// The AccessPolicy's name.
    pub name: String,
    /// The YAML.
    pub content: String,
}

/// Picks a free file and policy name for `grant`, renders it, and checks that the policy in
/// `dir` plus the new file is valid.
pub fn plan(dir: &Path, grant: &Grant<'_>) -> Result<Planned, GrantError> {
    let sources = read_sources(dir).map_err(|e| GrantError::Read(e.to_string()))?;
    // Names taken by AccessPolicies in the callee's namespace, from the files as they are now
    // (if they do not parse, validation below says so).
    let taken: Vec<String> = PolicySet::from_sources(&sources)
        .map(|set| {
            set.access_policies
                .iter()
                .filter(|p| p.service.namespace == grant.callee.namespace)
                .map(|p| p.name.to_string())
                .collect()
        })
        .unwrap_or_default();
    let base = format!("{}-to-{}", grant.caller.name, grant.callee.name);
    let mut n = 1;
    let (name, file) = loop {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let file = format!("{GRANTS_DIR}/{name}.yaml");
        if !taken.contains(&name) && !dir.join(&file).exists() {
            break (name, file);
        }
        n += 1;
    };
    let content = render_grant(grant, &name);
    let mut all = sources;
    all.push(SourceFile {
        path: Arc::from(dir.join(&file).as_path()),
        text: content.clone(),
    });
    match PolicySet::from_sources(&all) {
        Ok(_) => Ok(Planned {
            file,
            name,
            content,
        }),
        Err(LoadError::Read(e)) => Err(GrantError::Read(e.to_string())),
        Err(LoadError::Invalid {
            diagnostics,
            sources,
        }) => Err(GrantError::Invalid(
            diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| render(d, &sources, Style::plain()))
                .collect::<Vec<_>>()
                .join("\n"),
        )),
    }
}

/// The grant's YAML. Strings are written as JSON strings, which YAML reads as double-quoted
/// scalars: nothing a user types can change the document's structure.
pub fn render_grant(grant: &Grant<'_>, name: &str) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    let caller = if grant.caller.namespace == grant.callee.namespace {
        grant.caller.name.clone()
    } else {
        grant.caller.to_string()
    };
    let reason = if grant.reason.trim().is_empty() {
        format!("requested by {} via the portal", grant.requester.name)
    } else {
        grant.reason.to_owned()
    };
    let who = match &grant.requester.email {
        Some(email) => format!("{} <{}>", grant.requester.name, email),
        None => grant.requester.name.clone(),
    };
    let allow: Vec<String> = grant.rpcs.iter().map(|r| quote(r)).collect();
    // Lines joined explicitly: a `\` continuation in a literal would eat the indentation.
    [
        format!(
            "# Access granted through the Sluice portal (request #{}).",
            grant.request_id
        ),
        format!(
            "# Requested by {} at {}.",
            one_line(&who),
            humantime::format_rfc3339_seconds(grant.at)
        ),
        "# Written by the portal; edit it like any other policy file, or delete it to revoke."
            .to_owned(),
        "apiVersion: sluice.dev/v1alpha1".to_owned(),
        "kind: AccessPolicy".to_owned(),
        "metadata:".to_owned(),
        format!("  name: {name}"),
        format!("  namespace: {}", grant.callee.namespace),
        "spec:".to_owned(),
        format!("  service: {}", grant.callee.name),
        "  rules:".to_owned(),
        format!("    - name: portal-request-{}", grant.request_id),
        format!("      from: [{}]", quote(&caller)),
        format!("      allow: [{}]", allow.join(", ")),
        format!("      reason: {}", quote(&reason)),
        format!(
            "      ephemeral: {}",
            if grant.ephemeral == "copy" {
                "copy"
            } else {
                "shared"
            }
        ),
        String::new(),
    ]
    .join("\n")
}

/// Text safe inside a YAML comment: one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Writes `planned` under `dir` atomically and without replacing anything: a temporary file in
/// the same directory, hard-linked to its name (which fails if the name exists), then removed.
pub fn write(dir: &Path, planned: &Planned) -> Result<PathBuf, GrantError> {
    let target = dir.join(&planned.file);
    let parent = target.parent().unwrap_or(dir).to_path_buf();
    let io = |action: String| move |source| GrantError::Io { action, source };
    std::fs::create_dir_all(&parent).map_err(io(format!("create {}", parent.display())))?;
    // The temporary name does not end in `.yaml`, so the policy watcher never reads it.
    let temp = parent.join(format!(
        ".{}.tmp-{}-{}",
        planned.name,
        std::process::id(),
        crate::store::unix_ms(SystemTime::now())
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(planned.content.as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&temp, &target)
    })();
    let _ = std::fs::remove_file(&temp);
    result.map_err(io(format!("write {}", target.display())))?;
    Ok(target)
}

/// The top of the git work tree `dir` is in, if any (and git is installed).
pub fn git_toplevel(dir: &Path) -> Option<PathBuf> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--show-toplevel"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let top = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(top.trim()))
}

/// `file` (absolute) relative to the work tree's top, `/`-separated.
pub fn repo_path(top: &Path, file: &Path) -> Result<String, GrantError> {
    let canon = |p: &Path| {
        std::fs::canonicalize(p).map_err(|source| GrantError::Io {
            action: format!("resolve {}", p.display()),
            source,
        })
    };
    let top = canon(top)?;
    // The file may not exist yet (review drafts): resolve its directory's nearest existing
    // ancestor.
    let mut existing = file.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut full = canon(&existing)?;
    full.extend(rest.iter().rev());
    let relative = full.strip_prefix(&top).map_err(|_| GrantError::Git {
        command: "rev-parse".into(),
        stderr: format!(
            "{} is outside the work tree {}",
            full.display(),
            top.display()
        ),
    })?;
    Ok(relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/"))
}

/// Identity for git: the requester as author; the repository's configured committer, or a
/// portal identity when none is configured (git would refuse to commit otherwise).
fn git_env(top: &Path, author: &User) -> Vec<(String, String)> {
    let mut env = vec![
        ("GIT_AUTHOR_NAME".to_owned(), one_line(&author.name)),
        (
            "GIT_AUTHOR_EMAIL".to_owned(),
            author
                .email
                .clone()
                .unwrap_or_else(|| "portal@sluice.invalid".to_owned()),
        ),
    ];
    let configured = git(top, &["config", "user.email"], &[], None).is_ok_and(|e| !e.is_empty());
    if !configured {
        env.push(("GIT_COMMITTER_NAME".into(), "Sluice portal".into()));
        env.push(("GIT_COMMITTER_EMAIL".into(), "portal@sluice.invalid".into()));
    }
    env
}

fn git(
    top: &Path,
    args: &[&str],
    env: &[(String, String)],
    stdin: Option<&str>,
) -> Result<String, GrantError> {
    let command = args.first().copied().unwrap_or_default().to_owned();
    let failed = |stderr: String| GrantError::Git {
        command: command.clone(),
        stderr,
    };
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(top).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| failed(e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Commits the (already written) file `file` on the current branch, only that path; returns
/// the commit id. Other staged changes of the user stay staged and uncommitted.
pub fn commit(top: &Path, file: &Path, message: &str, author: &User) -> Result<String, GrantError> {
    let path = repo_path(top, file)?;
    let env = git_env(top, author);
    git(top, &["add", "--", &path], &env, None)?;
    git(
        top,
        &[
            "commit",
            "--quiet",
            "--no-verify",
            "-m",
            message,
            "--only",
            "--",
            &path,
        ],
        &env,
        None,
    )?;
    git(top, &["rev-parse", "HEAD"], &env, None)
}

/// Creates `branch` off `HEAD` with one commit adding `content` at `file` (absolute, not
/// written), using a private index: the working tree, the index and `HEAD` are untouched.
pub fn draft_branch(
    top: &Path,
    file: &Path,
    content: &str,
    branch: &str,
    message: &str,
    author: &User,
) -> Result<String, GrantError> {
    let path = repo_path(top, file)?;
    let mut env = git_env(top, author);
    let index = std::env::temp_dir().join(format!(
        "sluice-portal-index-{}-{}",
        std::process::id(),
        crate::store::unix_ms(SystemTime::now())
    ));
    env.push(("GIT_INDEX_FILE".into(), index.display().to_string()));
    let result = (|| {
        git(top, &["read-tree", "HEAD"], &env, None)?;
        let blob = git(top, &["hash-object", "-w", "--stdin"], &env, Some(content))?;
        let info = format!("100644,{blob},{path}");
        git(
            top,
            &["update-index", "--add", "--cacheinfo", &info],
            &env,
            None,
        )?;
        let tree = git(top, &["write-tree"], &env, None)?;
        let commit = git(
            top,
            &["commit-tree", &tree, "-p", "HEAD", "-m", message],
            &env,
            None,
        )?;
        let reference = format!("refs/heads/{branch}");
        // The empty old value makes git refuse if the branch already exists.
        git(top, &["update-ref", &reference, &commit, ""], &env, None)?;
        Ok(commit)
    })();
    let _ = std::fs::remove_file(&index);
    result
}

/// Deletes a review branch (after approval or rejection). Missing is fine.
pub fn delete_branch(top: &Path, branch: &str) -> Result<(), GrantError> {
    let reference = format!("refs/heads/{branch}");
    git(top, &["update-ref", "-d", &reference], &[], None).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grant_quotes_what_users_type() {
        let caller = ObjectRef::new("default", "checkout");
        let callee = ObjectRef::new("default", "catalog");
        let user = User {
            name: "ernie\nkind: Evil".into(),
            email: None,
        };
        let rpcs = vec!["GET /v1/products/{id}".to_owned()];
        let grant = Grant {
            caller: &caller,
            callee: &callee,
            rpcs: &rpcs,
            reason: "needs: \"prices\"\nreally",
            ephemeral: "copy",
            requester: &user,
            request_id: 7,
            at: SystemTime::UNIX_EPOCH,
        };
        let text = render_grant(&grant, "checkout-to-catalog");
        assert!(text.contains("ernie kind: Evil"), "{text}");
        assert!(
            text.contains(r#"reason: "needs: \"prices\"\nreally""#),
            "{text}"
        );
        let set = PolicySet::from_str(
            "grant.yaml",
            &format!(
                "{text}---\napiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: catalog}}\n\
spec: {{team: t, endpoints: [{{rpc: \"GET /v1/products/{{id}}\"}}]}}\n---\n\
apiVersion: sluice.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: checkout}}\nspec: {{team: t}}\n---\n\
apiVersion: sluice.dev/v1alpha1\nkind: Team\nmetadata: {{name: t}}\nspec: {{}}\n"
            ),
        );
        let set = match set {
            Ok(set) => set,
            Err(LoadError::Invalid {
                diagnostics,
                sources,
            }) => panic!(
                "{}",
                diagnostics
                    .iter()
                    .map(|d| render(d, &sources, Style::plain()))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            Err(e) => panic!("{e}"),
        };
        let rule = &set.access_policies[0].rules[0];
        assert_eq!(rule.reason, "needs: \"prices\"\nreally");
    }
}
