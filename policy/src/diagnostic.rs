//! Diagnostics: what is wrong, where (file:line:col and field path), and how to fix it.
//!
//! Loading and validation never stop at the first problem; they collect [`Diagnostic`]s, and
//! [`render`] prints them the way a compiler does.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy set is invalid and will not be loaded.
    Error,
    /// Worth a look, but the set is still valid.
    Warning,
}

/// A position in a source file, 1-based line and column (in characters).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Location {
    /// The file as it was named when loaded.
    pub file: Arc<Path>,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem found in a policy set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable, kebab-case code for the kind of problem, e.g. `unknown-field`.
    pub code: &'static str,
    /// What is wrong, in one sentence.
    pub message: String,
    /// Where; absent only for problems of the set as a whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The field path inside the document, e.g. `spec.rules[0].allow[1]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// How to fix it, where we can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    /// A new error. The message is kept to one line of at most [`MAX_MESSAGE_CHARS`]: messages
    /// quote values from the input, and a diagnostic must never echo more of a file than one
    /// line (it reaches logs, `sluice status` and the portal).
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: clip(&message.into(), MAX_MESSAGE_CHARS),
            location: None,
            field: None,
            help: None,
        }
    }

    /// A new warning.
    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    /// Sets the location.
    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    /// Sets the field path.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(clip(&field.into(), MAX_MESSAGE_CHARS));
        self
    }

    /// Sets the fix.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(clip(&help.into(), MAX_MESSAGE_CHARS));
        self
    }

    /// Sets the fix, if there is one.
    pub fn maybe_help(mut self, help: Option<String>) -> Self {
        self.help = help.map(|h| clip(&h, MAX_MESSAGE_CHARS));
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}[{}]: {}", self.code, self.message)?;
        if let Some(field) = &self.field {
            write!(f, " (at `{field}`)")?;
        }
        if let Some(help) = &self.help {
            write!(f, "; help: {help}")?;
        }
        Ok(())
    }
}

/// The longest message, field path or help kept, in characters.
pub const MAX_MESSAGE_CHARS: usize = 300;
/// The longest source line shown in a snippet, in characters: longer lines are shown as a
/// window around the column.
pub const MAX_SNIPPET_CHARS: usize = 160;

/// `text` on one line (line breaks and other control characters escaped) and at most `max`
/// characters, ending in `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    for c in text.chars() {
        let piece: std::borrow::Cow<'_, str> = match c {
            '\n' => "\\n".into(),
            '\r' => "\\r".into(),
            '\t' => "\\t".into(),
            c if c.is_control() => format!("\\u{{{:x}}}", u32::from(c)).into(),
            c => c.to_string().into(),
        };
        let len = piece.chars().count();
        if n + len > max {
            out.push('…');
            return out;
        }
        n += len;
        out.push_str(&piece);
    }
    out
}

/// The part of `line` a snippet shows around 1-based `column`, and the caret's new column.
fn snippet_window(line: &str, column: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= MAX_SNIPPET_CHARS {
        return (line.to_owned(), column);
    }
    let at = column.saturating_sub(1).min(chars.len());
    let start = at.saturating_sub(MAX_SNIPPET_CHARS / 3);
    let end = (start + MAX_SNIPPET_CHARS).min(chars.len());
    let mut shown = String::new();
    if start > 0 {
        shown.push('…');
    }
    shown.extend(&chars[start..end]);
    if end < chars.len() {
        shown.push('…');
    }
    (shown, at - start + usize::from(start > 0) + 1)
}

/// The closest candidate to `input`, if one is close enough to be a plausible typo.
pub fn did_you_mean<'a, I, S>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a S>,
    S: AsRef<str> + ?Sized + 'a,
{
    let lower = input.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(AsRef::as_ref)
        .map(|c| {
            (
                strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| *d <= (c.len().max(input.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The texts of the files a diagnostic may point into, for snippets.
pub trait SourceText {
    /// The full text of `file`, if known.
    fn text(&self, file: &Path) -> Option<&str>;
}

impl SourceText for std::collections::HashMap<PathBuf, String> {
    fn text(&self, file: &Path) -> Option<&str> {
        self.get(file).map(String::as_str)
    }
}

/// Colours for [`render`]; [`Style::plain`] for no colour.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    error: &'static str,
    warning: &'static str,
    accent: &'static str,
    bold: &'static str,
    reset: &'static str,
}

impl Style {
    /// No escape codes.
    pub const fn plain() -> Self {
        Style {
            error: "",
            warning: "",
            accent: "",
            bold: "",
            reset: "",
        }
    }

    /// ANSI colours, for terminals.
    pub const fn ansi() -> Self {
        Style {
            error: "\x1b[1;31m",
            warning: "\x1b[1;33m",
            accent: "\x1b[1;34m",
            bold: "\x1b[1m",
            reset: "\x1b[0m",
        }
    }
}

/// Renders a diagnostic like a compiler:
///
/// ```text
/// error[unknown-field]: unknown field `alow`
///   --> policy/payments.yaml:12:7
///    |
/// 12 |       alow: ["POST /v1/charges"]
///    |       ^
///    = field: spec.rules[0].alow
///    = help: did you mean `allow`?
/// ```
pub fn render(d: &Diagnostic, sources: &dyn SourceText, style: Style) -> String {
    let mut out = String::new();
    let (sev, colour) = match d.severity {
        Severity::Error => ("error", style.error),
        Severity::Warning => ("warning", style.warning),
    };
    let _ = writeln!(
        out,
        "{colour}{sev}[{}]{reset}{bold}: {}{reset}",
        d.code,
        d.message,
        reset = style.reset,
        bold = style.bold
    );
    let mut gutter = 2;
    if let Some(loc) = &d.location {
        // Never more than the offending line, and of a long line only a window around the
        // column. Control characters (tabs too) show as one space each, so the caret stays
        // under its column and nothing in the file can drive the reader's terminal.
        let line_text = sources
            .text(&loc.file)
            .and_then(|t| t.lines().nth(loc.line.saturating_sub(1)))
            .map(|l| {
                let l: String = l
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                snippet_window(&l, loc.column)
            });
        gutter = loc.line.to_string().len() + 1;
        let pad = " ".repeat(gutter);
        // As rustc does: the arrow sits one column left of the gutter bar.
        let arrow_pad = " ".repeat(gutter - 1);
        let _ = writeln!(out, "{arrow_pad}{}-->{} {loc}", style.accent, style.reset);
        if let Some((text, column)) = line_text {
            let _ = writeln!(out, "{pad}{}|{}", style.accent, style.reset);
            let _ = writeln!(
                out,
                "{}{:<w$}|{} {text}",
                style.accent,
                loc.line,
                style.reset,
                w = gutter
            );
            let caret_pad: String = text
                .chars()
                .take(column.saturating_sub(1))
                .map(|_| ' ')
                .collect();
            let _ = writeln!(
                out,
                "{pad}{}|{} {caret_pad}{colour}^{}",
                style.accent, style.reset, style.reset
            );
        }
    }
    let pad = " ".repeat(gutter);
    if let Some(field) = &d.field {
        let _ = writeln!(out, "{pad}{}={} field: {field}", style.accent, style.reset);
    }
    if let Some(help) = &d.help {
        let _ = writeln!(out, "{pad}{}={} help: {help}", style.accent, style.reset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("alow", ["allow", "from", "reason"]),
            Some("allow")
        );
        assert_eq!(
            did_you_mean("Acesspolicy", ["AccessPolicy", "Route"]),
            Some("AccessPolicy")
        );
        assert_eq!(did_you_mean("zzz", ["allow", "from"]), None);
    }

    #[test]
    fn renders_snippet_with_caret() {
        let file: Arc<Path> = Arc::from(Path::new("p.yaml"));
        let mut sources = std::collections::HashMap::new();
        sources.insert(PathBuf::from("p.yaml"), "a: 1\n  alow: x\n".to_owned());
        let d = Diagnostic::error("unknown-field", "unknown field `alow`")
            .at(Some(Location {
                file,
                line: 2,
                column: 3,
            }))
            .field("spec.alow")
            .help("did you mean `allow`?");
        let text = render(&d, &sources, Style::plain());
        assert_eq!(
            text,
            "error[unknown-field]: unknown field `alow`\n --> p.yaml:2:3\n  |\n2 |   alow: x\n  |   ^\n  = field: spec.alow\n  = help: did you mean `allow`?\n"
        );
    }

    #[test]
    fn messages_are_one_bounded_line() {
        let d = Diagnostic::error("x", format!("bad value `{}`\nline two", "v".repeat(1000)));
        assert!(!d.message.contains('\n'));
        assert!(
            d.message.chars().count() <= MAX_MESSAGE_CHARS + 1,
            "{}",
            d.message
        );
        assert!(d.message.ends_with('…'));
        assert_eq!(clip("a\nb", 10), "a\\nb");
    }

    #[test]
    fn long_lines_show_a_window_around_the_column() {
        let file: Arc<Path> = Arc::from(Path::new("p.yaml"));
        let line = format!("{}HERE{}", "a".repeat(5000), "b".repeat(5000));
        let mut sources = std::collections::HashMap::new();
        sources.insert(
            PathBuf::from("p.yaml"),
            format!("first\n{line}\nthird SECRET\n"),
        );
        let d = Diagnostic::error("x", "y").at(Some(Location {
            file,
            line: 2,
            column: 5001,
        }));
        let text = render(&d, &sources, Style::plain());
        assert!(
            !text.contains("SECRET") && !text.contains("first"),
            "{text}"
        );
        let snippet = text.lines().nth(3).expect("the snippet line");
        let caret = text.lines().nth(4).expect("the caret line");
        assert!(
            snippet.chars().count() < MAX_SNIPPET_CHARS + 10,
            "{snippet}"
        );
        let at = caret.chars().position(|c| c == '^').expect("caret");
        let under: String = snippet.chars().skip(at).take(4).collect();
        assert_eq!(under, "HERE", "{snippet}\n{caret}");
    }
}
