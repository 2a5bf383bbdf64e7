//! The RPC notation: concrete calls ([`Rpc`]) and the patterns that grant or declare them
//! ([`RpcPattern`]).
//!
//! | written                          | meaning                                             |
//! |----------------------------------|-----------------------------------------------------|
//! | `POST /v1/charges`               | exactly that method and path                        |
//! | `GET /v1/charges/{id}`           | `{id}` is any one non-empty path segment            |
//! | `GET /v1/*`                      | `/v1` and every path below it                       |
//! | `* /v1/*`                        | the same, for any method                            |
//! | `payments.v1.Payments/Refund`    | one gRPC method                                     |
//! | `payments.v1.Payments/*`         | every method of a gRPC service                      |
//! | `tcp:5432`                       | opaque TCP connections to port 5432                 |
//! | `tcp`                            | opaque TCP connections to any port                  |
//!
//! TCP is its own kind of call: no HTTP or gRPC pattern ever matches a TCP connection (not even
//! `* /*`), and a TCP grant never matches an HTTP request. An opaque connection carries
//! whatever bytes the caller likes, so it is granted only where a policy says so in as many
//! words.
//!
//! Paths are compared after normalisation ([`normalize_path`]): the query is dropped, empty and
//! `.` segments are removed and `..` pops a segment, so `/v1//charges/./x/..` is `/v1/charges`.

use std::fmt;

/// A concrete call, as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// A plain HTTP request.
    Http {
        /// The method, uppercase (`GET`).
        method: String,
        /// The request path (a query string is ignored).
        path: String,
    },
    /// A gRPC call (`POST /package.Service/Method` with `content-type: application/grpc`).
    Grpc {
        /// Fully-qualified service, e.g. `payments.v1.Payments`.
        service: String,
        /// Method name, e.g. `Refund`.
        method: String,
    },
    /// An opaque TCP connection (not HTTP, or a port that skips detection), decided once for
    /// the whole connection.
    Tcp {
        /// The destination port on the callee.
        port: u16,
    },
}

impl Rpc {
    /// An opaque TCP connection to `port`.
    pub fn tcp(port: u16) -> Rpc {
        Rpc::Tcp { port }
    }

    /// An HTTP call.
    pub fn http(method: impl Into<String>, path: impl Into<String>) -> Rpc {
        Rpc::Http {
            method: method.into().to_ascii_uppercase(),
            path: path.into(),
        }
    }

    /// A gRPC call.
    pub fn grpc(service: impl Into<String>, method: impl Into<String>) -> Rpc {
        Rpc::Grpc {
            service: service.into(),
            method: method.into(),
        }
    }

    /// Parses the written form of a concrete call: `POST /v1/charges` or
    /// `payments.v1.Payments/Refund`. Used by the CLI and the portal.
    pub fn parse(s: &str) -> Result<Rpc, RpcSyntaxError> {
        match RpcPattern::parse(s)? {
            RpcPattern::Http { method, .. } if method.is_none() => Err(RpcSyntaxError::new(
                s,
                "a concrete call needs a method, not `*`",
                "write e.g. `GET /v1/charges`",
            )),
            RpcPattern::Grpc { method: None, .. } => Err(RpcSyntaxError::new(
                s,
                "a concrete call names one gRPC method, not `*`",
                "write e.g. `payments.v1.Payments/Refund`",
            )),
            RpcPattern::Http { .. } => {
                let (method, path) = s.trim().split_once(char::is_whitespace).unwrap_or(("", s));
                if path.contains('{') || path.trim_end().ends_with('*') {
                    return Err(RpcSyntaxError::new(
                        s,
                        "a concrete call has no `{param}` or `*`",
                        "write the path as it is requested, e.g. `GET /v1/charges/ch_1`",
                    ));
                }
                Ok(Rpc::http(method, path.trim()))
            }
            RpcPattern::Grpc {
                service,
                method: Some(method),
            } => Ok(Rpc::Grpc { service, method }),
            RpcPattern::Tcp { port: Some(port) } => Ok(Rpc::Tcp { port }),
            RpcPattern::Tcp { port: None } => Err(RpcSyntaxError::new(
                s,
                "a concrete TCP connection names its port",
                "write e.g. `tcp:5432`",
            )),
        }
    }

    /// Classifies a request: gRPC when the content type says so and the path has the
    /// `/package.Service/Method` shape, HTTP otherwise.
    pub fn from_request(method: &str, path: &str, content_type: Option<&str>) -> Rpc {
        let is_grpc = content_type.is_some_and(|ct| ct.starts_with("application/grpc"));
        if is_grpc {
            let trimmed = path.split('?').next().unwrap_or("").trim_start_matches('/');
            if let Some((service, method)) = trimmed.split_once('/')
                && !service.is_empty()
                && !method.is_empty()
                && !method.contains('/')
            {
                return Rpc::grpc(service, method);
            }
        }
        Rpc::http(method, path)
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rpc::Http { method, path } => {
                let path = path.split('?').next().unwrap_or("");
                write!(f, "{method} {path}")
            }
            Rpc::Grpc { service, method } => write!(f, "{service}/{method}"),
            Rpc::Tcp { port } => write!(f, "tcp:{port}"),
        }
    }
}

/// One segment of a path template.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// Must equal this text.
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param(String),
}

/// A pattern that grants or declares calls.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RpcPattern {
    /// `METHOD /path/{param}/*`.
    Http {
        /// `None` for `*` (any method); otherwise uppercase.
        method: Option<String>,
        /// The path segments before any trailing `*`.
        segments: Vec<Segment>,
        /// A trailing `*`: the path may continue with zero or more segments.
        rest: bool,
    },
    /// `package.Service/Method` or `package.Service/*`.
    Grpc {
        /// Fully-qualified service.
        service: String,
        /// `None` for `*`.
        method: Option<String>,
    },
    /// `tcp` (any port) or `tcp:PORT`: opaque TCP connections.
    Tcp {
        /// `None` for any port.
        port: Option<u16>,
    },
}

/// Why an RPC or pattern could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid RPC `{input}`: {reason}")]
pub struct RpcSyntaxError {
    /// What was written.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
    /// How to write it instead.
    pub help: String,
}

impl RpcSyntaxError {
    fn new(input: &str, reason: impl Into<String>, help: impl Into<String>) -> Self {
        RpcSyntaxError {
            input: input.to_owned(),
            reason: reason.into(),
            help: help.into(),
        }
    }
}

/// HTTP methods accepted in patterns, besides `*`.
pub const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

const HTTP_HELP: &str = "write `METHOD /path`, e.g. `GET /v1/charges/{id}` or `* /v1/*`";
const GRPC_HELP: &str = "write `package.Service/Method` or `package.Service/*`";
const TCP_HELP: &str = "write `tcp` for opaque TCP to any port, or `tcp:5432` for one port";

impl RpcPattern {
    /// Parses the written notation (see the module docs).
    pub fn parse(s: &str) -> Result<RpcPattern, RpcSyntaxError> {
        let text = s.trim();
        if text.is_empty() {
            return Err(RpcSyntaxError::new(s, "it is empty", HTTP_HELP));
        }
        // Bytes, not `str` slices: the fourth byte may be inside a multi-byte character.
        let head = text.as_bytes();
        if text.eq_ignore_ascii_case("tcp")
            || (head.len() >= 4
                && head[..3].eq_ignore_ascii_case(b"tcp")
                && matches!(head[3], b':' | b'/' | b' ' | b'\t'))
        {
            return Self::parse_tcp(s, text);
        }
        match text.split_once(char::is_whitespace) {
            Some((method, path)) => Self::parse_http(s, method, path.trim()),
            None if text.starts_with('/') => Err(RpcSyntaxError::new(
                s,
                "the HTTP method is missing",
                format!("write `GET {text}`, or `* {text}` for any method"),
            )),
            None => Self::parse_grpc(s, text),
        }
    }

    fn parse_http(input: &str, method: &str, path: &str) -> Result<RpcPattern, RpcSyntaxError> {
        let method = if method == "*" {
            None
        } else {
            let upper = method.to_ascii_uppercase();
            if !HTTP_METHODS.contains(&upper.as_str()) {
                let suggestion = crate::diagnostic::did_you_mean(&upper, HTTP_METHODS)
                    .map(|m| format!("did you mean `{m}`? "))
                    .unwrap_or_default();
                return Err(RpcSyntaxError::new(
                    input,
                    format!("`{method}` is not an HTTP method"),
                    format!("{suggestion}use one of {} or `*`", HTTP_METHODS.join(", ")),
                ));
            }
            Some(upper)
        };
        if !path.starts_with('/') {
            return Err(RpcSyntaxError::new(
                input,
                "the path must start with `/`",
                HTTP_HELP,
            ));
        }
        if path.contains(char::is_whitespace) || path.contains('?') || path.contains('#') {
            return Err(RpcSyntaxError::new(
                input,
                "the path may not contain spaces, `?` or `#`",
                HTTP_HELP,
            ));
        }
        let raw: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(raw.len());
        let mut rest = false;
        for (i, seg) in raw.iter().enumerate() {
            let last = i + 1 == raw.len();
            if *seg == "*" {
                if !last {
                    return Err(RpcSyntaxError::new(
                        input,
                        "`*` may only be the last path segment",
                        "use `{name}` for one segment in the middle, e.g. `/v1/{id}/refunds`",
                    ));
                }
                rest = true;
            } else if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(RpcSyntaxError::new(
                        input,
                        format!("`{seg}` is not a valid parameter"),
                        "name parameters with letters, digits and `_`, e.g. `{id}`",
                    ));
                }
                segments.push(Segment::Param(name.to_owned()));
            } else if seg.contains(['{', '}', '*']) {
                return Err(RpcSyntaxError::new(
                    input,
                    format!("segment `{seg}` mixes text with `{{`, `}}` or `*`"),
                    "a segment is either literal text, a whole `{param}`, or a final `*`",
                ));
            } else if *seg == "." || *seg == ".." {
                return Err(RpcSyntaxError::new(
                    input,
                    "`.` and `..` segments are not allowed in patterns",
                    "write the normalised path",
                ));
            } else {
                segments.push(Segment::Literal((*seg).to_owned()));
            }
        }
        Ok(RpcPattern::Http {
            method,
            segments,
            rest,
        })
    }

    fn parse_tcp(input: &str, text: &str) -> Result<RpcPattern, RpcSyntaxError> {
        if text == "tcp" {
            return Ok(RpcPattern::Tcp { port: None });
        }
        let port = text.get(4..).unwrap_or("").trim();
        let number = port.parse::<u16>().ok().filter(|p| *p != 0);
        if let (Some(n), Some("tcp:")) = (number, text.get(..4)) {
            return Ok(RpcPattern::Tcp { port: Some(n) });
        }
        let (reason, help) = match number {
            Some(n) => (
                format!("`{text}` is not how a TCP grant is written"),
                format!("did you mean `tcp:{n}`? {TCP_HELP}"),
            ),
            None if text.eq_ignore_ascii_case("tcp") => (
                format!("`{text}` is not how a TCP grant is written"),
                format!("did you mean `tcp`? {TCP_HELP}"),
            ),
            None => (
                format!("`{port}` is not a port number (1-65535)"),
                TCP_HELP.to_owned(),
            ),
        };
        Err(RpcSyntaxError::new(input, reason, help))
    }

    fn parse_grpc(input: &str, text: &str) -> Result<RpcPattern, RpcSyntaxError> {
        let Some((service, method)) = text.split_once('/') else {
            let help = match crate::diagnostic::did_you_mean(text, ["tcp"]) {
                Some(t) => format!("did you mean `{t}`? {TCP_HELP}"),
                None => format!("{HTTP_HELP}; or {GRPC_HELP}; or {TCP_HELP}"),
            };
            return Err(RpcSyntaxError::new(
                input,
                "it is neither `METHOD /path`, `package.Service/Method` nor `tcp:PORT`",
                help,
            ));
        };
        let ident = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|part| {
                    part.chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
        };
        if !ident(service) {
            return Err(RpcSyntaxError::new(
                input,
                format!("`{service}` is not a gRPC service name"),
                GRPC_HELP,
            ));
        }
        let method = if method == "*" {
            None
        } else if ident(method) && !method.contains('.') {
            Some(method.to_owned())
        } else {
            return Err(RpcSyntaxError::new(
                input,
                format!("`{method}` is not a gRPC method name"),
                GRPC_HELP,
            ));
        };
        Ok(RpcPattern::Grpc {
            service: service.to_owned(),
            method,
        })
    }

    /// Whether this pattern matches a concrete call. This is the reference semantics; the
    /// compiled matchers in [`crate::authz`] must agree with it.
    pub fn matches(&self, rpc: &Rpc) -> bool {
        match (self, rpc) {
            (
                RpcPattern::Http {
                    method,
                    segments,
                    rest,
                },
                Rpc::Http { method: m, path: p },
            ) => {
                if method.as_deref().is_some_and(|want| want != m) {
                    return false;
                }
                let path = normalize_path(p);
                let parts: Vec<&str> = path_segments(&path).collect();
                if parts.len() < segments.len() || (!rest && parts.len() != segments.len()) {
                    return false;
                }
                segments.iter().zip(&parts).all(|(seg, part)| match seg {
                    Segment::Literal(l) => l == part,
                    Segment::Param(_) => true,
                })
            }
            (
                RpcPattern::Grpc { service, method },
                Rpc::Grpc {
                    service: s,
                    method: m,
                },
            ) => service == s && method.as_ref().is_none_or(|want| want == m),
            (RpcPattern::Tcp { port }, Rpc::Tcp { port: p }) => port.is_none_or(|want| want == *p),
            _ => false,
        }
    }

    /// Whether every call this pattern matches is also matched by `other`. Used to check that
    /// grants only name endpoints the callee declares.
    pub fn is_covered_by(&self, other: &RpcPattern) -> bool {
        match (self, other) {
            (
                RpcPattern::Http {
                    method: m1,
                    segments: s1,
                    rest: r1,
                },
                RpcPattern::Http {
                    method: m2,
                    segments: s2,
                    rest: r2,
                },
            ) => {
                let method_ok = match (m1, m2) {
                    (_, None) => true,
                    (Some(a), Some(b)) => a == b,
                    (None, Some(_)) => false,
                };
                let len_ok = if *r2 {
                    s1.len() >= s2.len()
                } else {
                    !r1 && s1.len() == s2.len()
                };
                method_ok
                    && len_ok
                    && s2.iter().zip(s1).all(|(b, a)| match (a, b) {
                        (_, Segment::Param(_)) => true,
                        (Segment::Literal(x), Segment::Literal(y)) => x == y,
                        (Segment::Param(_), Segment::Literal(_)) => false,
                    })
            }
            (
                RpcPattern::Grpc {
                    service: s1,
                    method: m1,
                },
                RpcPattern::Grpc {
                    service: s2,
                    method: m2,
                },
            ) => {
                s1 == s2
                    && match (m1, m2) {
                        (_, None) => true,
                        (Some(a), Some(b)) => a == b,
                        (None, Some(_)) => false,
                    }
            }
            (RpcPattern::Tcp { port: a }, RpcPattern::Tcp { port: b }) => b.is_none() || a == b,
            _ => false,
        }
    }

    /// Whether this pattern and `other` can match a common call.
    pub fn overlaps(&self, other: &RpcPattern) -> bool {
        match (self, other) {
            (
                RpcPattern::Http {
                    method: m1,
                    segments: s1,
                    rest: r1,
                },
                RpcPattern::Http {
                    method: m2,
                    segments: s2,
                    rest: r2,
                },
            ) => {
                let method_ok = m1.is_none() || m2.is_none() || m1 == m2;
                let len_ok = match (r1, r2) {
                    (true, true) => true,
                    (true, false) => s2.len() >= s1.len(),
                    (false, true) => s1.len() >= s2.len(),
                    (false, false) => s1.len() == s2.len(),
                };
                method_ok
                    && len_ok
                    && s1.iter().zip(s2).all(|(a, b)| match (a, b) {
                        (Segment::Literal(x), Segment::Literal(y)) => x == y,
                        _ => true,
                    })
            }
            (RpcPattern::Grpc { .. }, RpcPattern::Grpc { .. })
            | (RpcPattern::Tcp { .. }, RpcPattern::Tcp { .. }) => {
                self.is_covered_by(other) || other.is_covered_by(self)
            }
            _ => false,
        }
    }
}

impl fmt::Display for RpcPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcPattern::Http {
                method,
                segments,
                rest,
            } => {
                write!(f, "{} ", method.as_deref().unwrap_or("*"))?;
                for seg in segments {
                    match seg {
                        Segment::Literal(l) => write!(f, "/{l}")?,
                        Segment::Param(p) => write!(f, "/{{{p}}}")?,
                    }
                }
                match (segments.is_empty(), rest) {
                    (_, true) => f.write_str("/*"),
                    (true, false) => f.write_str("/"),
                    (false, false) => Ok(()),
                }
            }
            RpcPattern::Grpc { service, method } => {
                write!(f, "{service}/{}", method.as_deref().unwrap_or("*"))
            }
            RpcPattern::Tcp { port: None } => f.write_str("tcp"),
            RpcPattern::Tcp { port: Some(p) } => write!(f, "tcp:{p}"),
        }
    }
}

/// What makes a request path non-canonical. See [`check_request_path`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathProblem {
    /// Not origin-form: the path does not start with `/` (e.g. `*`).
    NotOriginForm,
    /// A `.` or `..` segment, also with a path parameter (`..;x`, which Java servers resolve).
    DotSegment,
    /// An empty segment: `//`.
    EmptySegment,
    /// `%2e`: a `.` an application may decode into a dot segment.
    EncodedDot,
    /// `%2f`: a `/` an application may decode into a separator.
    EncodedSlash,
    /// `%5c`: a `\` an application may decode into a separator.
    EncodedBackslash,
    /// `\`, a separator to some servers.
    Backslash,
    /// A control character (which some servers truncate at).
    Control,
}

impl PathProblem {
    /// What is wrong, as a phrase: "it has a `..` segment".
    pub fn describe(self) -> &'static str {
        match self {
            PathProblem::NotOriginForm => "it does not start with `/`",
            PathProblem::DotSegment => "it has a `.` or `..` segment",
            PathProblem::EmptySegment => "it has an empty segment (`//`)",
            PathProblem::EncodedDot => "it has an encoded `.` (%2e)",
            PathProblem::EncodedSlash => "it has an encoded `/` (%2f)",
            PathProblem::EncodedBackslash => "it has an encoded `\\` (%5c)",
            PathProblem::Backslash => "it has a `\\`",
            PathProblem::Control => "it has a control character",
        }
    }
}

/// Why a request path is refused before any policy is consulted: what is wrong and, when the
/// path has an unambiguous canonical form, that form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct NonCanonicalPath {
    /// What is wrong.
    pub problem: PathProblem,
    /// The canonical form (dot segments resolved, slashes merged, query kept), for the
    /// problems that have one; encoded separators have none (decoding them is the risk).
    pub canonical: Option<String>,
}

impl NonCanonicalPath {
    /// One sentence for the client: what is wrong and what to send instead.
    pub fn message(&self) -> String {
        match &self.canonical {
            Some(c) => format!(
                "the request path is not canonical: {}; send its canonical form `{c}` instead",
                self.problem.describe()
            ),
            None => format!(
                "the request path is not canonical: {}; send the path unencoded, with `/` \
                 separators and no `.`, `..` or empty segments",
                self.problem.describe()
            ),
        }
    }
}

/// Refuses request paths that are not canonical, so that the path the proxy authorizes is the
/// path the application reads, byte for byte.
///
/// The proxy never rewrites a path: rewriting means two parties (the proxy and the
/// application) must agree on what the rewritten path means, and they don't (RFC 3986,
/// WHATWG URL, Tomcat's `..;` and servers that decode `%2f` all differ). Instead a path is
/// forwarded only when every reader must read it the same way:
///
/// - it starts with `/` (origin-form);
/// - no segment is empty (`//`), except that the path may end with one `/`;
/// - no segment is `.` or `..`, not even with a path parameter (`..;x`);
/// - no `%2e`, `%2f` or `%5c` (any case), no `\`, no control character.
///
/// The query (after `?`) is not checked. Other percent-encodings pass as they are and are
/// matched literally, so `/v1/ch%61rges` does not match a grant for `/v1/charges` (it fails
/// closed). The common, canonical case does not allocate.
pub fn check_request_path(path: &str) -> Result<(), NonCanonicalPath> {
    // One pass over the bytes: this runs on every request, and splitting by segment, then by
    // `;`, then comparing cost three walks over the path.
    let bytes = path.as_bytes();
    let end = bytes
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(bytes.len());
    let bytes = &bytes[..end];
    let fail = |problem: PathProblem| {
        let canonical = matches!(problem, PathProblem::DotSegment | PathProblem::EmptySegment)
            .then(|| canonical_form(path));
        Err(NonCanonicalPath { problem, canonical })
    };
    if bytes.first() != Some(&b'/') {
        return fail(PathProblem::NotOriginForm);
    }
    // A byte problem is the more precise complaint, so the first segment problem waits
    // until every byte has been seen.
    let mut segment_problem = None;
    let (mut segment_start, mut name_end) = (1, None);
    for i in 1..=bytes.len() {
        match bytes.get(i) {
            Some(b'\\') => return fail(PathProblem::Backslash),
            Some(b'%') => match bytes.get(i + 1..i + 3) {
                Some([b'2', b'e' | b'E']) => return fail(PathProblem::EncodedDot),
                Some([b'2', b'f' | b'F']) => return fail(PathProblem::EncodedSlash),
                Some([b'5', b'c' | b'C']) => return fail(PathProblem::EncodedBackslash),
                _ => {}
            },
            Some(b) if b.is_ascii_control() => return fail(PathProblem::Control),
            Some(b';') => {
                name_end.get_or_insert(i);
            }
            Some(b'/') | None => {
                if segment_problem.is_none() {
                    let last = i == bytes.len();
                    // The segment's name is what comes before its first `;` (`..;x` is `..`).
                    let name = &bytes[segment_start..name_end.unwrap_or(i)];
                    if segment_start == i && !last {
                        segment_problem = Some(PathProblem::EmptySegment);
                    } else if name == b"." || name == b".." {
                        segment_problem = Some(PathProblem::DotSegment);
                    }
                }
                (segment_start, name_end) = (i + 1, None);
            }
            Some(_) => {}
        }
    }
    match segment_problem {
        Some(problem) => fail(problem),
        None => Ok(()),
    }
}

/// The canonical form of `path`: `.` and `..` resolved as RFC 3986 §5.2.4 (and WHATWG URL)
/// do, where an empty segment is a segment (`/a//../b` is `/a/b`) and `..;x` counts as `..`;
/// then empty segments merged away. A trailing `/` stays when the input ended in `/`, `/.` or
/// `/..`, and the query is kept as it was.
pub fn canonical_form(path: &str) -> String {
    let (path_only, rest) = match path.find(['?', '#']) {
        Some(i) => path.split_at(i),
        None => (path, ""),
    };
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in path_only.strip_prefix('/').unwrap_or(path_only).split('/') {
        let name = segment.split(';').next().unwrap_or("");
        trailing = matches!(name, "" | "." | "..");
        match name {
            "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(segment),
        }
    }
    let mut s = String::with_capacity(path.len());
    for segment in out.iter().filter(|s| !s.is_empty()) {
        s.push('/');
        s.push_str(segment);
    }
    if s.is_empty() || trailing {
        s.push('/');
    }
    s.push_str(rest);
    s
}

/// Normalises a request path for matching: drops the query and fragment, empty and `.`
/// segments, and resolves `..` (never above the root).
pub fn normalize_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len().max(1));
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// The segments of a normalised path.
pub fn path_segments(normalized: &str) -> impl Iterator<Item = &str> {
    normalized.split('/').filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RpcPattern {
        RpcPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_and_displays_every_notation() {
        for s in [
            "POST /v1/charges",
            "GET /v1/charges/{id}",
            "GET /v1/*",
            "* /v1/*",
            "GET /",
            "* /*",
            "payments.v1.Payments/Refund",
            "payments.v1.Payments/*",
            "tcp",
            "tcp:5432",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        assert_eq!(p("get /v1//charges/").to_string(), "GET /v1/charges");
    }

    #[test]
    fn rejects_malformed_patterns_with_help() {
        let cases = [
            ("", "it is empty"),
            ("/v1/charges", "the HTTP method is missing"),
            ("FETCH /v1", "`FETCH` is not an HTTP method"),
            ("GET v1", "the path must start with `/`"),
            ("GET /v1/*/x", "`*` may only be the last path segment"),
            ("GET /v1/{}", "`{}` is not a valid parameter"),
            ("GET /v1/a{b}", "segment `a{b}` mixes text"),
            ("GET /v1/../x", "`.` and `..` segments are not allowed"),
            ("payments.v1.Payments", "it is neither"),
            ("payments..v1/Refund", "is not a gRPC service name"),
            ("payments.v1.Payments/Re.fund", "is not a gRPC method name"),
        ];
        for (input, want) in cases {
            let err = RpcPattern::parse(input).expect_err(input);
            assert!(err.reason.contains(want), "{input}: {}", err.reason);
            assert!(!err.help.is_empty());
        }
        let err = RpcPattern::parse("GTE /x").expect_err("typo");
        assert!(err.help.contains("did you mean `GET`"), "{}", err.help);
        for (typo, want) in [
            ("TCP:5432", "did you mean `tcp:5432`?"),
            ("tcp/5432", "did you mean `tcp:5432`?"),
            ("tcp 5432", "did you mean `tcp:5432`?"),
            ("TCP", "did you mean `tcp`?"),
            ("tpc", "did you mean `tcp`?"),
        ] {
            let err = RpcPattern::parse(typo).expect_err(typo);
            assert!(err.help.contains(want), "{typo}: {}", err.help);
        }
        for bad in ["tcp:0", "tcp:65536", "tcp:", "tcp:http"] {
            let err = RpcPattern::parse(bad).expect_err(bad);
            assert!(err.reason.contains("is not a port number"), "{bad}: {err}");
        }
        assert!(
            Rpc::parse("tcp").is_err(),
            "a concrete connection names its port"
        );
        assert_eq!(Rpc::parse("tcp:5432").ok(), Some(Rpc::tcp(5432)));
    }

    /// Found by the `parse_policy` fuzz target: a pattern whose fourth byte is inside a
    /// multi-byte character (`G\u{fffd}`) panicked while checking for a `tcp:` prefix.
    #[test]
    fn a_multi_byte_character_in_the_first_four_bytes_is_an_error_not_a_panic() {
        for text in ["G\u{fffd}", "tc\u{e9}", "tcp\u{e9}", "\u{1f600}"] {
            assert!(RpcPattern::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn tcp_is_its_own_kind_of_call() {
        let conn = Rpc::tcp(5432);
        assert!(p("tcp").matches(&conn));
        assert!(p("tcp:5432").matches(&conn));
        assert!(!p("tcp:5433").matches(&conn));
        for http in ["* /*", "* /", "CONNECT /"] {
            assert!(!p(http).matches(&conn), "{http} must not grant opaque TCP");
        }
        assert!(!p("tcp").matches(&Rpc::http("CONNECT", "/")));
        assert!(p("tcp:5432").is_covered_by(&p("tcp")));
        assert!(!p("tcp").is_covered_by(&p("tcp:5432")));
        assert!(p("tcp").overlaps(&p("tcp:1")));
        assert!(!p("tcp:2").overlaps(&p("tcp:1")));
        assert!(!p("tcp").overlaps(&p("* /*")));
        assert_eq!(conn.to_string(), "tcp:5432");
    }

    #[test]
    fn matches_templates_wildcards_and_grpc() {
        let get = |path: &str| Rpc::http("GET", path);
        assert!(p("GET /v1/charges/{id}").matches(&get("/v1/charges/ch_1")));
        assert!(!p("GET /v1/charges/{id}").matches(&get("/v1/charges")));
        assert!(!p("GET /v1/charges/{id}").matches(&get("/v1/charges/ch_1/x")));
        assert!(!p("POST /v1/charges/{id}").matches(&get("/v1/charges/ch_1")));
        assert!(p("* /v1/*").matches(&get("/v1")));
        assert!(p("* /v1/*").matches(&get("/v1/a/b?x=1")));
        assert!(!p("* /v1/*").matches(&get("/v2/a")));
        assert!(p("GET /v1/charges").matches(&get("/v1//charges/./")));
        assert!(!p("GET /admin").matches(&get("/v1/../x/admin")));
        assert!(p("GET /admin").matches(&get("/v1/../admin")));
        let refund = Rpc::grpc("payments.v1.Payments", "Refund");
        assert!(p("payments.v1.Payments/Refund").matches(&refund));
        assert!(p("payments.v1.Payments/*").matches(&refund));
        assert!(!p("payments.v1.Payments/Charge").matches(&refund));
        assert!(
            !p("* /*").matches(&refund),
            "HTTP patterns never match gRPC calls"
        );
    }

    #[test]
    fn coverage_and_overlap() {
        assert!(p("GET /v1/charges/{id}").is_covered_by(&p("GET /v1/charges/{x}")));
        assert!(p("GET /v1/charges/ch_1").is_covered_by(&p("GET /v1/charges/{id}")));
        assert!(!p("GET /v1/charges/{id}").is_covered_by(&p("GET /v1/charges/ch_1")));
        assert!(p("GET /v1/a/b").is_covered_by(&p("* /v1/*")));
        assert!(!p("* /v1/*").is_covered_by(&p("GET /v1/*")));
        assert!(p("a.B/C").is_covered_by(&p("a.B/*")));
        assert!(p("GET /v1/*").overlaps(&p("GET /v1/charges/{id}")));
        assert!(!p("GET /v1/x").overlaps(&p("GET /v2/x")));
    }

    #[test]
    fn refuses_paths_an_application_could_read_differently() {
        for ok in [
            "/",
            "/v1/charges/ch_1?q=%2e%2e/../x",
            "/v1/ch%41rges",
            "/v1/charges/",
            "/a;b/c",
            "/.well-known/x",
            "/...",
            "/..a",
        ] {
            assert_eq!(check_request_path(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("/public/%2e%2e/admin", PathProblem::EncodedDot),
            ("/public/%2E./x", PathProblem::EncodedDot),
            ("/a%2Fb", PathProblem::EncodedSlash),
            ("/a%5cb", PathProblem::EncodedBackslash),
            ("/a\\b", PathProblem::Backslash),
            ("/a\tb", PathProblem::Control),
            ("*", PathProblem::NotOriginForm),
            ("", PathProblem::NotOriginForm),
            ("/admin/../public/x", PathProblem::DotSegment),
            ("/admin//../public/x", PathProblem::EmptySegment),
            ("/public/./x", PathProblem::DotSegment),
            ("/public/..;/admin", PathProblem::DotSegment),
            ("/public/.;x/admin", PathProblem::DotSegment),
            ("/..", PathProblem::DotSegment),
            ("//", PathProblem::EmptySegment),
            ("//admin", PathProblem::EmptySegment),
        ];
        for (bad, problem) in cases {
            let err = check_request_path(bad).expect_err(bad);
            assert_eq!(err.problem, problem, "{bad}");
        }
    }

    /// The check as first written (a pass over the bytes, then one over the segments).
    fn check_request_path_oracle(path: &str) -> Result<(), NonCanonicalPath> {
        let path_only = path.split(['?', '#']).next().unwrap_or("");
        let bytes = path_only.as_bytes();
        let fail = |problem: PathProblem| {
            let canonical = matches!(problem, PathProblem::DotSegment | PathProblem::EmptySegment)
                .then(|| canonical_form(path));
            Err(NonCanonicalPath { problem, canonical })
        };
        if bytes.first() != Some(&b'/') {
            return fail(PathProblem::NotOriginForm);
        }
        // Bytes first: an encoded or odd separator is the more precise complaint.
        for (i, b) in bytes.iter().enumerate() {
            match b {
                b'\\' => return fail(PathProblem::Backslash),
                b'%' => match bytes.get(i + 1..i + 3) {
                    Some([b'2', b'e' | b'E']) => return fail(PathProblem::EncodedDot),
                    Some([b'2', b'f' | b'F']) => return fail(PathProblem::EncodedSlash),
                    Some([b'5', b'c' | b'C']) => return fail(PathProblem::EncodedBackslash),
                    _ => {}
                },
                b if b.is_ascii_control() => return fail(PathProblem::Control),
                _ => {}
            }
        }
        let mut segments = path_only[1..].split('/').peekable();
        while let Some(segment) = segments.next() {
            let last = segments.peek().is_none();
            if segment.is_empty() && !last {
                return fail(PathProblem::EmptySegment);
            }
            let name = segment.split(';').next().unwrap_or("");
            if name == "." || name == ".." {
                return fail(PathProblem::DotSegment);
            }
        }
        Ok(())
    }

    /// The one-pass check says exactly what the first one said, problem and canonical form,
    /// on generated paths made of the pieces the rules look at.
    #[test]
    fn the_one_pass_check_is_the_check_as_first_written() {
        let pieces = [
            "/", "a", "bc", ".", "..", ";", ";x", "%2e", "%2E", "%2f", "%5C", "%41", "%", "%2",
            "\\", "\t", "?", "#", "?q=..", "", "*",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..20_000 {
            let count = next(9);
            let mut path = String::from(if next(8) == 0 { "" } else { "/" });
            for _ in 0..count {
                path.push_str(pieces[next(pieces.len())]);
            }
            assert_eq!(
                check_request_path(&path),
                check_request_path_oracle(&path),
                "{path:?}"
            );
        }
    }

    #[test]
    fn canonical_forms_follow_rfc_3986_with_merged_slashes() {
        let err = check_request_path("/admin/../healthz?x=1").expect_err("dots");
        assert_eq!(err.canonical.as_deref(), Some("/healthz?x=1"));
        assert!(err.to_string().contains("`..`"), "{err}");
        assert!(err.to_string().contains("`/healthz?x=1`"), "{err}");
        for (path, canonical) in [
            ("/admin//../public/x", "/admin/public/x"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/../../x", "/x"),
            ("//", "/"),
            ("/a/..;/b", "/b"),
        ] {
            assert_eq!(canonical_form(path), canonical, "{path}");
            assert_eq!(check_request_path(canonical), Ok(()), "{canonical}");
        }
        let encoded = check_request_path("/a%2fb").expect_err("encoded");
        assert_eq!(encoded.canonical, None);
    }

    #[test]
    fn classifies_requests() {
        assert_eq!(
            Rpc::from_request(
                "POST",
                "/payments.v1.Payments/Refund",
                Some("application/grpc")
            ),
            Rpc::grpc("payments.v1.Payments", "Refund")
        );
        assert_eq!(
            Rpc::from_request("POST", "/v1/charges", Some("application/json")),
            Rpc::http("POST", "/v1/charges")
        );
        assert_eq!(
            Rpc::parse("get /v1/x").map(|r| r.to_string()).ok(),
            Some("GET /v1/x".into())
        );
        assert!(Rpc::parse("GET /v1/{id}").is_err());
        assert_eq!(
            Rpc::parse("GET\t/v1/x").ok(),
            Some(Rpc::http("GET", "/v1/x"))
        );
    }
}
