//! `sluice policy check DIR`: load, validate, report every problem, summarise.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use sluice_policy::diagnostic::{Diagnostic, render};
use sluice_policy::resources::Kind;
use sluice_policy::validate::LoadError;
use sluice_policy::{PolicySet, load};

use crate::{CheckArgs, CliError, Format, Outcome, Paint, Terminal, plural};

/// The `--format json` report. Field names are part of the CLI's contract with scripts.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    valid: bool,
    files: usize,
    /// Documents per kind (`"AccessPolicy": 3`), counting those that parsed.
    counts: BTreeMap<&'static str, usize>,
    diagnostics: &'a [Diagnostic],
}

/// What a check found, whichever way it went.
struct Report {
    valid: bool,
    sources: HashMap<PathBuf, String>,
    diagnostics: Vec<Diagnostic>,
}

pub(crate) fn run(
    args: &CheckArgs,
    terminal: Terminal,
    out: &mut dyn Write,
) -> Result<Outcome, CliError> {
    let report = match PolicySet::load(&args.dir) {
        Ok(set) => Report {
            valid: true,
            sources: set.sources,
            diagnostics: set.warnings,
        },
        Err(LoadError::Invalid {
            diagnostics,
            sources,
        }) => Report {
            valid: false,
            sources,
            diagnostics,
        },
        Err(LoadError::Read(e)) => {
            if args.format == Format::Json {
                print_read_error_json(out, &e.to_string())?;
            }
            return Err(e.into());
        }
    };
    let counts = count_documents(&report.sources);
    match args.format {
        Format::Json => {
            let json = JsonReport {
                valid: report.valid,
                files: report.sources.len(),
                counts: counts.iter().map(|(k, n)| (k.as_str(), *n)).collect(),
                diagnostics: &report.diagnostics,
            };
            serde_json::to_writer_pretty(&mut *out, &json).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Format::Human => {
            let paint = Paint {
                enabled: terminal.use_color(args.color),
            };
            for d in &report.diagnostics {
                writeln!(
                    out,
                    "{}",
                    render(d, &report.sources, paint.diagnostic_style())
                )?;
            }
            writeln!(
                out,
                "{}",
                summary_line(
                    report.sources.len(),
                    &counts,
                    &report.diagnostics,
                    paint.enabled
                )
            )?;
        }
    }
    Ok(if report.valid {
        Outcome::Success
    } else {
        Outcome::PolicyInvalid
    })
}

fn print_read_error_json(out: &mut dyn Write, error: &str) -> Result<(), CliError> {
    let json = serde_json::json!({ "valid": false, "error": error });
    writeln!(out, "{json}")?;
    Ok(())
}

/// Counts the documents of each kind that parse, whether or not the set as a whole is valid,
/// so that even a failing check says what it looked at.
fn count_documents(sources: &HashMap<PathBuf, String>) -> BTreeMap<Kind, usize> {
    let mut counts: BTreeMap<Kind, usize> = Kind::ALL.into_iter().map(|k| (k, 0)).collect();
    for (path, text) in sources {
        let file: Arc<Path> = Arc::from(path.as_path());
        for d in load::parse_file(&file, text).documents {
            *counts.entry(d.resource.kind()).or_default() += 1;
        }
    }
    counts
}

/// The last line of a check:
/// `checked 9 files: 2 teams, 4 services, 3 access policies, 1 route, 1 canary policy — ok`,
/// or `checked 9 files: 3 errors, 1 warning`.
pub fn summary_line(
    files: usize,
    counts: &BTreeMap<Kind, usize>,
    diagnostics: &[Diagnostic],
    color: bool,
) -> String {
    let paint = Paint { enabled: color };
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    let files = plural(files, "file", "files");
    let warning_text = plural(warnings, "warning", "warnings");
    if errors > 0 {
        let mut problems = paint.paint(Paint::RED, &plural(errors, "error", "errors"));
        if warnings > 0 {
            problems.push_str(", ");
            problems.push_str(&paint.paint(Paint::YELLOW, &warning_text));
        }
        return format!("checked {files}: {problems}");
    }
    let resources: Vec<String> = counts
        .iter()
        .filter(|&(kind, n)| *kind != Kind::Mesh && *n > 0)
        .map(|(kind, n)| {
            let (one, many) = kind_nouns(*kind);
            plural(*n, one, many)
        })
        .collect();
    let resources = if resources.is_empty() {
        "no resources".to_owned()
    } else {
        resources.join(", ")
    };
    let mut verdict = paint.paint(Paint::GREEN, "ok");
    if warnings > 0 {
        verdict.push_str(", ");
        verdict.push_str(&paint.paint(Paint::YELLOW, &warning_text));
    }
    format!("checked {files}: {resources} — {verdict}")
}

fn kind_nouns(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Mesh => ("mesh", "meshes"),
        Kind::Team => ("team", "teams"),
        Kind::MeshService => ("service", "services"),
        Kind::AccessPolicy => ("access policy", "access policies"),
        Kind::Route => ("route", "routes"),
        Kind::CanaryPolicy => ("canary policy", "canary policies"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(Kind, usize)]) -> BTreeMap<Kind, usize> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn valid_summary_lists_resources_in_kind_order() {
        let line = summary_line(
            9,
            &counts(&[
                (Kind::Mesh, 1),
                (Kind::Team, 2),
                (Kind::MeshService, 4),
                (Kind::AccessPolicy, 3),
                (Kind::Route, 1),
                (Kind::CanaryPolicy, 1),
            ]),
            &[],
            false,
        );
        assert_eq!(
            line,
            "checked 9 files: 2 teams, 4 services, 3 access policies, 1 route, 1 canary policy — ok"
        );
    }

    #[test]
    fn invalid_summary_counts_problems() {
        let diags = vec![
            Diagnostic::error("a", "x"),
            Diagnostic::error("a", "y"),
            Diagnostic::error("a", "z"),
            Diagnostic::warning("b", "w"),
        ];
        assert_eq!(
            summary_line(1, &counts(&[(Kind::Team, 1)]), &diags, false),
            "checked 1 file: 3 errors, 1 warning"
        );
    }

    #[test]
    fn warnings_do_not_spoil_ok() {
        let diags = vec![Diagnostic::warning("b", "w")];
        assert_eq!(
            summary_line(2, &counts(&[(Kind::Route, 2)]), &diags, false),
            "checked 2 files: 2 routes — ok, 1 warning"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let line = summary_line(1, &BTreeMap::new(), &[], true);
        assert!(line.contains("\x1b[1;32mok\x1b[0m"), "{line:?}");
        assert!(!summary_line(1, &BTreeMap::new(), &[], false).contains('\x1b'));
    }
}
