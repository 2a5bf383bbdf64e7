//! Checking a policy set as a whole, and the checked form the compiler consumes.
//!
//! Parsing ([`crate::load`]) catches what one document can get wrong on its own: syntax, unknown
//! fields, wrong types. This module catches what only the whole set can: duplicate names,
//! references to services, teams and versions that do not exist, malformed RPC patterns,
//! weights that do not add up. Every problem is reported, each with a position and a fix.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diagnostic::{Diagnostic, Location, did_you_mean};
use crate::load::{
    BrokenDocument, Budget, LoadedDocument, PolicySources, ReadError, SourceFile,
    parse_file_within, read_policy_dir,
};
use crate::resources::{
    AccessPolicySpec, CanaryPolicySpec, Document, EphemeralMode, Kind, MeshServiceSpec, MeshSpec,
    PolicyMode, Resource, RouteSpec, TeamSpec,
};
use crate::rpc::RpcPattern;

mod kinds;
use kinds::{
    Surface, check_backends, check_canary, check_mesh, check_service, check_team, parse_rpc,
    warn_undeclared,
};

/// A namespaced name, e.g. `default/payments`. Displayed without the namespace when it is
/// `default`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectRef {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectRef {
    /// A reference to `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `name` (in `namespace`) or `other-namespace/name`.
    pub fn parse_in(namespace: &str, s: &str) -> Self {
        match s.split_once('/') {
            Some((ns, name)) => ObjectRef::new(ns, name),
            None => ObjectRef::new(namespace, s),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace == crate::resources::DEFAULT_NAMESPACE {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Where a resource was written.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The file.
    pub file: Arc<Path>,
    /// Position of the document's start.
    pub location: Option<Location>,
}

/// A checked resource: the document as written, and where.
#[derive(Clone, Debug)]
pub struct Checked<S> {
    /// The document.
    pub doc: Document<S>,
    /// Where it was written.
    pub origin: Origin,
}

impl<S> Checked<S> {
    /// The resource's namespaced name.
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(self.doc.metadata.namespace(), &self.doc.metadata.name)
    }
}

/// Who a grant is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallerSelector {
    /// `*`: any service with a mesh identity.
    AnyService,
    /// One service.
    Service(ObjectRef),
}

/// An access rule after checking: callers resolved, patterns parsed.
#[derive(Clone, Debug)]
pub struct CheckedRule {
    /// The rule's name (`rules[N]` when unnamed).
    pub name: Arc<str>,
    /// The callers it grants.
    pub from: Vec<CallerSelector>,
    /// The endpoints it grants.
    pub allow: Vec<RpcPattern>,
    /// Why it exists.
    pub reason: String,
    /// How ephemeral environments reach the callee.
    pub ephemeral: EphemeralMode,
}

/// An AccessPolicy after checking.
#[derive(Clone, Debug)]
pub struct CheckedAccessPolicy {
    /// The policy's name.
    pub name: Arc<str>,
    /// The callee.
    pub service: ObjectRef,
    /// Enforce or audit.
    pub mode: PolicyMode,
    /// The grants.
    pub rules: Vec<CheckedRule>,
    /// Endpoints callable without identity, with the reason.
    pub unauthenticated: Vec<(RpcPattern, String)>,
    /// The document as written.
    pub source: Checked<AccessPolicySpec>,
}

/// A MeshService after checking.
#[derive(Clone, Debug)]
pub struct CheckedService {
    /// Its declared endpoints, parsed, in the order written.
    pub endpoints: Vec<RpcPattern>,
    /// The document as written.
    pub source: Checked<MeshServiceSpec>,
}

/// A valid policy set: every reference resolves and every pattern parses. Build it with
/// [`PolicySet::load`], [`PolicySet::from_sources`] or [`PolicySet::from_str`]; compile it into
/// a [`crate::Snapshot`] with [`PolicySet::compile`].
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    /// Mesh-wide settings (defaults when no `Mesh` document exists).
    pub mesh: MeshSpec,
    /// Teams by name.
    pub teams: BTreeMap<ObjectRef, Checked<TeamSpec>>,
    /// Services by name.
    pub services: BTreeMap<ObjectRef, CheckedService>,
    /// Access policies, by callee, then name (not file order: see the end of `check`).
    pub access_policies: Vec<CheckedAccessPolicy>,
    /// Routes by service.
    pub routes: BTreeMap<ObjectRef, Checked<RouteSpec>>,
    /// Canary policies by service.
    pub canaries: BTreeMap<ObjectRef, Checked<CanaryPolicySpec>>,
    /// Problems that do not make the set invalid.
    pub warnings: Vec<Diagnostic>,
    /// The files the set was read from, and their text (for snippets in diagnostics).
    pub sources: HashMap<PathBuf, String>,
}

/// Why a policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Nothing could be read (exit code 2 in the CLI).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// It was read but is invalid (exit code 1 in the CLI). Holds every problem, errors first.
    #[error("{} error(s) in the policy set", .diagnostics.iter().filter(|d| d.is_error()).count())]
    Invalid {
        /// All diagnostics, errors and warnings.
        diagnostics: Vec<Diagnostic>,
        /// The files read, for rendering snippets.
        sources: HashMap<PathBuf, String>,
    },
}

impl PolicySet {
    /// Reads, parses and checks every policy file under `path` (see
    /// [`crate::load::read_policy_dir`] for which files are read).
    pub fn load(path: &Path) -> Result<PolicySet, LoadError> {
        PolicySet::from_read(read_policy_dir(path)?)
    }

    /// Parses and checks what [`read_policy_dir`] read: files it refused make the set invalid,
    /// files it skipped are warnings.
    pub fn from_read(read: PolicySources) -> Result<PolicySet, LoadError> {
        PolicySet::check_sources(&read.files, read.diagnostics)
    }

    /// Parses and checks one YAML text, named `file` in diagnostics.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(file: &str, text: &str) -> Result<PolicySet, LoadError> {
        PolicySet::from_sources(&[SourceFile {
            path: Arc::from(Path::new(file)),
            text: text.to_owned(),
        }])
    }

    /// Parses and checks a set of files.
    pub fn from_sources(files: &[SourceFile]) -> Result<PolicySet, LoadError> {
        PolicySet::check_sources(files, Vec::new())
    }

    fn check_sources(
        files: &[SourceFile],
        mut diags: Vec<Diagnostic>,
    ) -> Result<PolicySet, LoadError> {
        let mut docs = Vec::new();
        let mut broken = Vec::new();
        // One budget for the whole set: many small files cannot each expand to the limit.
        let mut budget = Budget::default();
        for f in files {
            let parsed = parse_file_within(&f.path, &f.text, &mut budget);
            docs.extend(parsed.documents);
            broken.extend(parsed.broken);
            diags.extend(parsed.diagnostics);
        }
        let sources: HashMap<PathBuf, String> = files
            .iter()
            .map(|f| (f.path.to_path_buf(), f.text.clone()))
            .collect();
        let mut set = check(docs, &broken, &mut diags);
        set.sources = sources;
        if diags.iter().any(Diagnostic::is_error) {
            diags.sort_by_key(|d| (!d.is_error(), d.location.clone()));
            return Err(LoadError::Invalid {
                diagnostics: diags,
                sources: set.sources,
            });
        }
        set.warnings = diags;
        Ok(set)
    }

    /// Resources per kind, for summaries (`loaded 4 services, 2 teams, …`).
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut m = BTreeMap::new();
        m.insert(Kind::Mesh, 1);
        m.insert(Kind::Team, self.teams.len());
        m.insert(Kind::MeshService, self.services.len());
        m.insert(Kind::AccessPolicy, self.access_policies.len());
        m.insert(Kind::Route, self.routes.len());
        m.insert(Kind::CanaryPolicy, self.canaries.len());
        m
    }

    /// The resources as written, in a stable order: what the controller ships to proxies.
    pub fn resources(&self) -> Vec<Resource> {
        let mut out = Vec::new();
        out.extend(self.teams.values().map(|t| Resource::Team(t.doc.clone())));
        out.extend(
            self.services
                .values()
                .map(|s| Resource::MeshService(s.source.doc.clone())),
        );
        out.extend(
            self.access_policies
                .iter()
                .map(|p| Resource::AccessPolicy(p.source.doc.clone())),
        );
        out.extend(self.routes.values().map(|r| Resource::Route(r.doc.clone())));
        out.extend(
            self.canaries
                .values()
                .map(|c| Resource::CanaryPolicy(c.doc.clone())),
        );
        out
    }
}

/// Builds diagnostics for one document.
struct Ctx<'a> {
    doc: &'a LoadedDocument,
    diags: &'a mut Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn error(&mut self, code: &'static str, field: &str, message: String, help: Option<String>) {
        self.diags.push(
            Diagnostic::error(code, message)
                .at(self.doc.at(field))
                .field(field)
                .maybe_help(help),
        );
    }

    fn warning(&mut self, code: &'static str, field: &str, message: String, help: Option<String>) {
        self.diags.push(
            Diagnostic::warning(code, message)
                .at(self.doc.at(field))
                .field(field)
                .maybe_help(help),
        );
    }
}

fn suggestion<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a String>,
    what: &str,
) -> String {
    let all: Vec<&String> = candidates.into_iter().collect();
    match did_you_mean(input, all.iter().map(|s| s.as_str())) {
        Some(s) => format!("did you mean `{s}`?"),
        None if all.is_empty() => format!("declare the {what} first"),
        None => {
            let mut names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
            names.sort_unstable();
            names.truncate(8);
            format!("declared {what}s: {}", names.join(", "))
        }
    }
}

/// Teams own services across namespaces, so a bare team name is looked up in the referring
/// document's namespace first and then in `default`; `namespace/team` is exact.
fn resolve_team(ns: &str, name: &str, teams: &[ObjectRef]) -> ObjectRef {
    let own = ObjectRef::parse_in(ns, name);
    if name.contains('/') || teams.contains(&own) {
        return own;
    }
    let shared = ObjectRef::new(crate::resources::DEFAULT_NAMESPACE, name);
    if teams.contains(&shared) { shared } else { own }
}

fn team_suggestion(input: &str, teams: &[ObjectRef]) -> String {
    let names: Vec<String> = teams.iter().map(ToString::to_string).collect();
    suggestion(input, &names, "team")
}

/// An RFC 1123 label: what names of namespaces, services and environments must be.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn label_help(s: &str) -> String {
    let fixed: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let fixed = fixed.trim_matches('-');
    if is_dns_label(fixed) {
        format!("use lowercase letters, digits and `-`, e.g. `{fixed}`")
    } else {
        "use lowercase letters, digits and `-` (at most 63)".to_owned()
    }
}

fn check(
    docs: Vec<LoadedDocument>,
    broken: &[BrokenDocument],
    diags: &mut Vec<Diagnostic>,
) -> PolicySet {
    // Pass 1: names, duplicates and the index of what exists.
    let mut seen: HashMap<(Kind, ObjectRef), Option<Location>> = HashMap::new();
    let mut unique = Vec::with_capacity(docs.len());
    for doc in docs {
        let meta = doc.resource.metadata();
        let key = ObjectRef::new(meta.namespace(), &meta.name);
        let mut ctx = Ctx {
            doc: &doc,
            diags: &mut *diags,
        };
        if !is_dns_label(&meta.name) {
            ctx.error(
                "invalid-name",
                "metadata.name",
                format!("`{}` is not a valid name", meta.name),
                Some(label_help(&meta.name)),
            );
        }
        if let Some(ns) = &meta.namespace
            && !is_dns_label(ns)
        {
            ctx.error(
                "invalid-name",
                "metadata.namespace",
                format!("`{ns}` is not a valid namespace"),
                Some(label_help(ns)),
            );
        }
        let kind = doc.resource.kind();
        let first = if kind == Kind::Mesh {
            seen.iter()
                .find(|((k, _), _)| *k == Kind::Mesh)
                .map(|(_, l)| l.clone())
        } else {
            seen.get(&(kind, key.clone())).cloned()
        };
        if let Some(first) = first {
            let (message, what) = if kind == Kind::Mesh {
                ("a second `Mesh` document".to_owned(), "merge the two")
            } else {
                (
                    format!("duplicate {kind} `{key}`"),
                    "rename one of them, or remove the copy",
                )
            };
            let help = match first {
                Some(l) => format!("the first is at {l}; {what}"),
                None => what.to_owned(),
            };
            ctx.error("duplicate", "metadata.name", message, Some(help));
            continue;
        }
        seen.insert((kind, key), doc.at(""));
        unique.push(doc);
    }

    let mut set = PolicySet::default();
    let service_names: HashMap<ObjectRef, &LoadedDocument> = unique
        .iter()
        .filter(|d| d.resource.kind() == Kind::MeshService)
        .map(|d| {
            let m = d.resource.metadata();
            (ObjectRef::new(m.namespace(), &m.name), d)
        })
        .collect();
    let team_refs: Vec<ObjectRef> = unique
        .iter()
        .filter(|d| d.resource.kind() == Kind::Team)
        .map(|d| {
            let m = d.resource.metadata();
            ObjectRef::new(m.namespace(), &m.name)
        })
        .collect();
    // Names of documents that failed to parse: already reported, so references to them are not.
    let broken_names = |kind: Kind, r: &ObjectRef| {
        broken
            .iter()
            .any(|b| b.kind == kind && b.namespace == r.namespace && b.name == r.name)
    };
    let versions_of = |svc: &ObjectRef| -> Option<Vec<String>> {
        service_names.get(svc).and_then(|d| match &d.resource {
            Resource::MeshService(s) => Some(s.spec.versions.clone()),
            _ => None,
        })
    };
    let ports_of = |svc: &ObjectRef| -> Vec<crate::resources::Port> {
        service_names
            .get(svc)
            .and_then(|d| match &d.resource {
                Resource::MeshService(s) => Some(s.spec.ports.clone()),
                _ => None,
            })
            .unwrap_or_default()
    };
    let endpoints_of = |svc: &ObjectRef| -> Vec<RpcPattern> {
        service_names
            .get(svc)
            .and_then(|d| match &d.resource {
                Resource::MeshService(s) => Some(
                    s.spec
                        .endpoints
                        .iter()
                        .filter_map(|e| RpcPattern::parse(&e.rpc).ok())
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    };

    // Pass 2: each kind's own checks and its references.
    for doc in &unique {
        let mut ctx = Ctx {
            doc,
            diags: &mut *diags,
        };
        let origin = Origin {
            file: doc.file.clone(),
            location: doc.at(""),
        };
        let ns = doc.resource.metadata().namespace().to_owned();
        // A policy may only govern services of its own namespace: otherwise anyone who can
        // write policy in one namespace could grant themselves access to another's services.
        let own_service_ref = |ctx: &mut Ctx<'_>, name: &str| -> Option<String> {
            match name.split_once('/') {
                Some((other, bare)) if other != ns => {
                    ctx.error(
                        "cross-namespace",
                        "spec.service",
                        format!(
                            "this {} in namespace `{ns}` cannot govern `{name}`",
                            doc.resource.kind()
                        ),
                        Some(format!(
                            "move this document into namespace `{other}` and write `service: {bare}`"
                        )),
                    );
                    None
                }
                Some((_, bare)) => Some(bare.to_owned()),
                None => Some(name.to_owned()),
            }
        };
        let service_ref = |ctx: &mut Ctx<'_>, field: &str, name: &str| -> Option<ObjectRef> {
            let r = ObjectRef::parse_in(&ns, name);
            if service_names.contains_key(&r) {
                return Some(r);
            }
            if broken_names(Kind::MeshService, &r) {
                return None;
            }
            let names: Vec<String> = service_names.keys().map(ToString::to_string).collect();
            ctx.error(
                "unknown-service",
                field,
                format!("no MeshService `{r}` is declared"),
                Some(suggestion(name, &names, "service")),
            );
            None
        };
        match &doc.resource {
            Resource::Mesh(d) => {
                check_mesh(&mut ctx, &d.spec);
                set.mesh = d.spec.clone();
            }
            Resource::Team(d) => {
                check_team(&mut ctx, &d.spec);
                let c = Checked {
                    doc: d.clone(),
                    origin,
                };
                set.teams.insert(c.key(), c);
            }
            Resource::MeshService(d) => {
                let team_ref = resolve_team(d.metadata.namespace(), &d.spec.team, &team_refs);
                if !team_refs.contains(&team_ref) && !broken_names(Kind::Team, &team_ref) {
                    ctx.error(
                        "unknown-team",
                        "spec.team",
                        format!("no Team `{team_ref}` is declared"),
                        Some(team_suggestion(&d.spec.team, &team_refs)),
                    );
                }
                let endpoints = check_service(&mut ctx, &d.spec);
                let c = Checked {
                    doc: d.clone(),
                    origin,
                };
                set.services.insert(
                    c.key(),
                    CheckedService {
                        endpoints,
                        source: c,
                    },
                );
            }
            Resource::AccessPolicy(d) => {
                let callee = own_service_ref(&mut ctx, &d.spec.service)
                    .and_then(|name| service_ref(&mut ctx, "spec.service", &name));
                let declared = callee.as_ref().map(&endpoints_of).unwrap_or_default();
                let ports = callee.as_ref().map(&ports_of).unwrap_or_default();
                let surface = Surface {
                    endpoints: &declared,
                    ports: &ports,
                    callee: callee.as_ref(),
                };
                let mut rules = Vec::new();
                for (i, rule) in d.spec.rules.iter().enumerate() {
                    let base = format!("spec.rules[{i}]");
                    let mut from = Vec::new();
                    if rule.from.is_empty() {
                        ctx.error(
                            "empty",
                            &format!("{base}.from"),
                            "`from` lists no callers".to_owned(),
                            Some("name the calling services, or `*` for any meshed service".into()),
                        );
                    }
                    for (j, caller) in rule.from.iter().enumerate() {
                        if caller == "*" {
                            from.push(CallerSelector::AnyService);
                        } else if let Some(r) =
                            service_ref(&mut ctx, &format!("{base}.from[{j}]"), caller)
                        {
                            from.push(CallerSelector::Service(r));
                        }
                    }
                    if rule.allow.is_empty() {
                        ctx.error(
                            "empty",
                            &format!("{base}.allow"),
                            "`allow` lists no endpoints".to_owned(),
                            Some("list the endpoints, e.g. `POST /v1/charges`".into()),
                        );
                    }
                    let mut allow = Vec::new();
                    for (j, rpc) in rule.allow.iter().enumerate() {
                        let field = format!("{base}.allow[{j}]");
                        if let Some(p) = parse_rpc(&mut ctx, &field, rpc) {
                            warn_undeclared(&mut ctx, &field, &p, &surface);
                            allow.push(p);
                        }
                    }
                    if rule.reason.trim().is_empty() {
                        ctx.error(
                            "empty",
                            &format!("{base}.reason"),
                            "`reason` is empty".to_owned(),
                            Some("say why this access exists; reviewers read it".into()),
                        );
                    }
                    if let Some(name) = &rule.name {
                        let field = format!("{base}.name");
                        if !is_dns_label(name) {
                            ctx.error(
                                "invalid-name",
                                &field,
                                format!("`{name}` is not a valid rule name"),
                                Some(label_help(name)),
                            );
                        }
                        let earlier = d.spec.rules[..i]
                            .iter()
                            .position(|r| r.name.as_deref() == Some(name.as_str()));
                        if let Some(first) = earlier {
                            ctx.error(
                                "duplicate",
                                &field,
                                format!("rule name `{name}` is used twice in this policy"),
                                Some(format!(
                                    "denials and metrics name rules; rename this one or rules[{first}]"
                                )),
                            );
                        }
                    }
                    rules.push(CheckedRule {
                        name: Arc::from(rule.name.clone().unwrap_or_else(|| format!("rules[{i}]"))),
                        from,
                        allow,
                        reason: rule.reason.clone(),
                        ephemeral: rule.ephemeral,
                    });
                }
                let mut unauthenticated = Vec::new();
                for (i, ex) in d.spec.unauthenticated.iter().enumerate() {
                    let base = format!("spec.unauthenticated[{i}]");
                    if ex.reason.trim().is_empty() {
                        ctx.error(
                            "empty",
                            &format!("{base}.reason"),
                            "`reason` is empty".to_owned(),
                            Some(
                                "say who needs this without an identity, e.g. `kubelet probes`"
                                    .into(),
                            ),
                        );
                    }
                    let field = format!("{base}.rpc");
                    if let Some(p) = parse_rpc(&mut ctx, &field, &ex.rpc) {
                        warn_undeclared(&mut ctx, &field, &p, &surface);
                        unauthenticated.push((p, ex.reason.clone()));
                    }
                }
                if let Some(service) = callee {
                    let source = Checked {
                        doc: d.clone(),
                        origin,
                    };
                    set.access_policies.push(CheckedAccessPolicy {
                        name: Arc::from(d.metadata.name.as_str()),
                        service,
                        mode: d.spec.mode,
                        rules,
                        unauthenticated,
                        source,
                    });
                }
            }
            Resource::Route(d) => {
                let svc = own_service_ref(&mut ctx, &d.spec.service)
                    .and_then(|name| service_ref(&mut ctx, "spec.service", &name));
                let versions = svc.as_ref().and_then(&versions_of).unwrap_or_default();
                let svc_name = svc.as_ref().map(ToString::to_string).unwrap_or_default();
                check_backends(
                    &mut ctx,
                    "spec.backends",
                    &d.spec.backends,
                    &versions,
                    &svc_name,
                );
                for (i, rule) in d.spec.rules.iter().enumerate() {
                    let base = format!("spec.rules[{i}]");
                    if let Some(rpc) = &rule.matches.rpc {
                        let field = format!("{base}.match.rpc");
                        if let Some(RpcPattern::Tcp { .. }) = parse_rpc(&mut ctx, &field, rpc) {
                            ctx.error(
                                "invalid-rpc",
                                &field,
                                format!("`{rpc}`: Route rules match HTTP and gRPC requests"),
                                Some(
                                    "opaque TCP follows the Route's `backends`; remove the rule's \
                                     `rpc` or match an HTTP or gRPC call"
                                        .into(),
                                ),
                            );
                        }
                    }
                    if rule.backends.is_empty() && rule.environment.is_none() {
                        ctx.error(
                            "empty",
                            &base,
                            "the rule sends traffic nowhere".to_owned(),
                            Some("give it `backends` or an `environment`".into()),
                        );
                    }
                    if let Some(env) = &rule.environment
                        && !is_dns_label(env)
                    {
                        ctx.error(
                            "invalid-name",
                            &format!("{base}.environment"),
                            format!("`{env}` is not a valid environment name"),
                            Some(label_help(env)),
                        );
                    }
                    check_backends(
                        &mut ctx,
                        &format!("{base}.backends"),
                        &rule.backends,
                        &versions,
                        &svc_name,
                    );
                }
                if let Some(svc) = svc {
                    if let Some(prev) = set.routes.get(&svc) {
                        let help = prev
                            .origin
                            .location
                            .as_ref()
                            .map(|l| format!("the first is at {l}; merge their rules"));
                        ctx.error(
                            "duplicate",
                            "spec.service",
                            format!("a second Route for `{svc}`"),
                            help,
                        );
                    } else {
                        set.routes.insert(
                            svc,
                            Checked {
                                doc: d.clone(),
                                origin,
                            },
                        );
                    }
                }
            }
            Resource::CanaryPolicy(d) => {
                let svc = own_service_ref(&mut ctx, &d.spec.service)
                    .and_then(|name| service_ref(&mut ctx, "spec.service", &name));
                check_canary(&mut ctx, &d.spec, &ns, &team_refs);
                if let Some(svc) = svc {
                    if let Some(prev) = set.canaries.get(&svc) {
                        let help = prev
                            .origin
                            .location
                            .as_ref()
                            .map(|l| format!("the first is at {l}; keep one"));
                        ctx.error(
                            "duplicate",
                            "spec.service",
                            format!("a second CanaryPolicy for `{svc}`"),
                            help,
                        );
                    } else {
                        set.canaries.insert(
                            svc,
                            Checked {
                                doc: d.clone(),
                                origin,
                            },
                        );
                    }
                }
            }
        }
    }
    // One order whatever the layout: the bundle, its version and "the first grant wins" then
    // do not depend on which file a policy sits in, or on whether it came from a file or a
    // Kubernetes object (which has no file order), so both publish the same version.
    set.access_policies
        .sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    set
}
