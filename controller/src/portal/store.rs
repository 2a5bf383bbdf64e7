//! Access requests and the portal's audit log in the controller's SQLite store (tables from
//! migration 3 in `crate::store`).
//!
//! A request is kept as one JSON document plus the columns lists need, like rollouts are: the
//! document grows fields without a migration each time. The audit log is append-only.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// Requests shown in the list (newest first); older ones stay in the store.
pub const LIST_LIMIT: i64 = 200;

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for a member of the callee's team.
    Pending,
    /// Applied at once (policy allowed it without review).
    Granted,
    /// Reviewed and applied.
    Approved,
    /// Reviewed and refused.
    Rejected,
}

impl Status {
    /// The lowercase name shown on pages and stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Granted => "granted",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
        }
    }
}

/// One access request, as submitted and as decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    /// Assigned by the store (0 before insertion).
    pub id: i64,
    /// When it was submitted.
    pub created_unix_ms: i64,
    /// Where it stands.
    pub status: Status,
    /// Who asked (the portal user's name).
    pub requester: String,
    /// Their email, when known.
    pub requester_email: Option<String>,
    /// The caller, `namespace/name`.
    pub caller: String,
    /// The callee, `namespace/name`.
    pub callee: String,
    /// The endpoints asked for, as written in the grant.
    pub rpcs: Vec<String>,
    /// Why, as the requester wrote it (may be empty).
    pub reason: String,
    /// `shared` or `copy`.
    pub ephemeral: String,
    /// The environment the denial came from (`stable`, `pr-42`).
    pub environment: String,
    /// The team that reviews (the callee's).
    pub reviewer_team: String,
    /// The grant file relative to the policy directory, as planned (pending) or written.
    pub file: String,
    /// The grant file's contents, as planned or written (the diff shown on the page).
    pub content: String,
    /// The review branch (`sluice/access-<id>`) when the policy directory is a git work tree.
    pub branch: Option<String>,
    /// The commit that applied the grant, when git recorded it.
    pub commit: Option<String>,
    /// Who approved or rejected it.
    pub decided_by: Option<String>,
    /// When.
    pub decided_unix_ms: Option<i64>,
    /// The reviewer's comment.
    pub comment: Option<String>,
    /// Problems worth showing that did not stop the request (e.g. git refused to commit).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One audit log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// When.
    pub at_unix_ms: i64,
    /// The request it concerns.
    pub request_id: i64,
    /// Who acted.
    pub actor: String,
    /// `granted`, `requested`, `approved`, `rejected`.
    pub action: String,
    /// What, in one line.
    pub detail: String,
}

fn to_json<T: Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Inserts a new request and its audit entry in one transaction; returns the id.
pub fn insert(
    store: &Store,
    request: &AccessRequest,
    audit: Option<&AuditEntry>,
) -> Result<i64, StoreError> {
    store.with(|c| {
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO access_requests (created_unix_ms, status, doc) VALUES (?1, ?2, '{}')",
            params![request.created_unix_ms, request.status.as_str()],
        )?;
        let id = tx.last_insert_rowid();
        let mut stored = request.clone();
        stored.id = id;
        tx.execute(
            "UPDATE access_requests SET doc = ?1 WHERE id = ?2",
            params![to_json(&stored)?, id],
        )?;
        if let Some(audit) = audit {
            append_audit(&tx, id, audit)?;
        }
        tx.commit()?;
        Ok(id)
    })
}

/// Replaces a request's document (status, decision, notes) and appends its audit entry.
pub fn update(
    store: &Store,
    request: &AccessRequest,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    store.with(|c| {
        let tx = c.transaction()?;
        tx.execute(
            "UPDATE access_requests SET status = ?1, doc = ?2 WHERE id = ?3",
            params![request.status.as_str(), to_json(request)?, request.id],
        )?;
        append_audit(&tx, request.id, audit)?;
        tx.commit()
    })
}

/// Replaces a request's document without an audit entry (a note added, a branch recorded).
pub fn save(store: &Store, request: &AccessRequest) -> Result<(), StoreError> {
    store.with(|c| {
        c.execute(
            "UPDATE access_requests SET status = ?1, doc = ?2 WHERE id = ?3",
            params![request.status.as_str(), to_json(request)?, request.id],
        )
        .map(|_| ())
    })
}

fn append_audit(tx: &rusqlite::Transaction<'_>, id: i64, a: &AuditEntry) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO access_audit (at_unix_ms, request_id, actor, action, detail)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![a.at_unix_ms, id, a.actor, a.action, a.detail],
    )
    .map(|_| ())
}

/// One request.
pub fn get(store: &Store, id: i64) -> Result<Option<AccessRequest>, StoreError> {
    store.with(|c| {
        c.query_row(
            "SELECT doc FROM access_requests WHERE id = ?1",
            params![id],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .map(|doc| from_json(&doc))
        .transpose()
    })
}

/// The newest [`LIST_LIMIT`] requests.
pub fn list(store: &Store) -> Result<Vec<AccessRequest>, StoreError> {
    store.with(|c| {
        let mut stmt = c.prepare("SELECT doc FROM access_requests ORDER BY id DESC LIMIT ?1")?;
        stmt.query_map(params![LIST_LIMIT], |r| r.get::<_, String>(0))?
            .map(|doc| doc.and_then(|d| from_json(&d)))
            .collect()
    })
}

/// The newest `limit` audit entries (for one request when `request` is given).
pub fn audit(
    store: &Store,
    request: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, StoreError> {
    store.with(|c| {
        let mut stmt = c.prepare(
            "SELECT at_unix_ms, request_id, actor, action, detail FROM access_audit
             WHERE ?1 IS NULL OR request_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        stmt.query_map(params![request, limit], |r| {
            Ok(AuditEntry {
                at_unix_ms: r.get(0)?,
                request_id: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                detail: r.get(4)?,
            })
        })?
        .collect()
    })
}

/// The calls recently denied from `caller` to `callee` (names as in the denials table), newest
/// first, each once.
pub fn recent_denied_rpcs(
    store: &Store,
    caller: (&str, &str),
    callee: (&str, &str),
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    store.with(|c| {
        let mut stmt = c.prepare(
            "SELECT rpc, endpoint FROM denials
             WHERE caller_namespace = ?1 AND caller = ?2 AND namespace = ?3 AND service = ?4
             ORDER BY last_seen_unix_ms DESC LIMIT ?5",
        )?;
        let rows = stmt
            .query_map(
                params![caller.0, caller.1, callee.0, callee.1, limit],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out: Vec<String> = Vec::new();
        for (rpc, endpoint) in rows {
            // Offer what the denial link offers: the declared endpoint when it names one.
            let offered = sluice_policy::link::offered_rpc(
                (!endpoint.is_empty()).then_some(endpoint.as_str()),
                &rpc,
            );
            if !out.contains(&offered) {
                out.push(offered);
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AccessRequest {
        AccessRequest {
            id: 0,
            created_unix_ms: 1,
            status: Status::Pending,
            requester: "ernie".into(),
            requester_email: None,
            caller: "default/checkout".into(),
            callee: "default/payments".into(),
            rpcs: vec!["POST /v1/refunds".into()],
            reason: "refunds".into(),
            ephemeral: "shared".into(),
            environment: "stable".into(),
            reviewer_team: "payments".into(),
            file: "grants/checkout-to-payments.yaml".into(),
            content: "x".into(),
            branch: None,
            commit: None,
            decided_by: None,
            decided_unix_ms: None,
            comment: None,
            notes: Vec::new(),
        }
    }

    #[test]
    fn requests_and_audit_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let entry = AuditEntry {
            at_unix_ms: 1,
            request_id: 0,
            actor: "ernie".into(),
            action: "requested".into(),
            detail: "d".into(),
        };
        let id = insert(&store, &request(), Some(&entry))?;
        let mut got = get(&store, id)?.ok_or("missing")?;
        assert_eq!(got.id, id);
        got.status = Status::Rejected;
        update(
            &store,
            &got,
            &AuditEntry {
                action: "rejected".into(),
                ..entry
            },
        )?;
        assert_eq!(list(&store)?[0].status, Status::Rejected);
        let log = audit(&store, Some(id), 10)?;
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].action, "rejected");
        assert_eq!(get(&store, id + 1)?, None);
        Ok(())
    }
}
