//! The controller's embedded, crash-safe store: SQLite (compiled in by `rusqlite`'s `bundled`
//! feature) in `STATE_DIR/controller.db`, in WAL mode.
//!
//! Runtime state lives here, policy does not (the policy directory is the source of truth for
//! that): workload registrations, aggregated denials, the history of refused policy
//! changes, rollouts (see `rollout::store`) and ephemeral environments (`env::store`). SQL keeps the portal's later queries ("denials of my service this week") easy.
//!
//! Every write is one transaction; with WAL and `synchronous=NORMAL` a committed transaction
//! survives the controller being killed (only a power cut can lose the last few). One
//! connection behind a mutex is plenty for the controller's write rates; callers on the async
//! side go through [`Store::run`], which does the work on tokio's blocking pool so a slow disk
//! never stalls a gRPC worker.
//!
//! The schema is versioned in the `meta` table (`schema_version`); [`MIGRATIONS`] lists every
//! step, and opening a database applies the ones it has not seen, in one transaction.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// The database file under the state directory.
pub const DB_FILE: &str = "controller.db";
/// Distinct denials kept; the least recently seen go first.
pub const MAX_DENIALS: i64 = 10_000;
/// Refused policy changes kept.
pub const MAX_CONFIG_ERRORS: i64 = 100;

/// Schema steps, in order; `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
/// Only ever append.
pub const MIGRATIONS: &[&str] = &[
    // 1: registrations, denials, config errors.
    "CREATE TABLE registrations (
        namespace   TEXT NOT NULL,
        service     TEXT NOT NULL,
        instance    TEXT NOT NULL,
        version     TEXT NOT NULL,
        environment TEXT NOT NULL,
        address     TEXT NOT NULL,
        registered_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (namespace, service, instance)
    );
    CREATE TABLE denials (
        caller_namespace TEXT NOT NULL,
        caller      TEXT NOT NULL,
        namespace   TEXT NOT NULL,
        service     TEXT NOT NULL,
        rpc         TEXT NOT NULL,
        endpoint    TEXT NOT NULL,
        policies    TEXT NOT NULL,
        environment TEXT NOT NULL,
        verdict     TEXT NOT NULL,
        count       INTEGER NOT NULL,
        first_seen_unix_ms INTEGER NOT NULL,
        last_seen_unix_ms  INTEGER NOT NULL,
        last_request_id TEXT NOT NULL,
        last_proxy_id   TEXT NOT NULL,
        PRIMARY KEY (caller_namespace, caller, namespace, service, rpc, endpoint, policies,
                     environment, verdict)
    );
    CREATE INDEX denials_by_last_seen ON denials (last_seen_unix_ms);
    CREATE TABLE config_errors (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        at_unix_ms INTEGER NOT NULL,
        summary  TEXT NOT NULL,
        rendered TEXT NOT NULL
    );",
    // 2: rollouts (the document as JSON, with the columns queries need), their events and
    // analysis points, each service's promoted stable version, and delivered notifications.
    "CREATE TABLE rollouts (
        id        TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        service   TEXT NOT NULL,
        phase     TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        doc       TEXT NOT NULL
    );
    CREATE INDEX rollouts_by_service ON rollouts (namespace, service, created_unix_ms);
    CREATE TABLE rollout_events (
        rollout_id TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        at_unix_ms INTEGER NOT NULL,
        kind       TEXT NOT NULL,
        message    TEXT NOT NULL,
        PRIMARY KEY (rollout_id, seq)
    );
    CREATE TABLE rollout_points (
        rollout_id TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        doc        TEXT NOT NULL,
        PRIMARY KEY (rollout_id, seq)
    );
    CREATE TABLE stable_versions (
        namespace TEXT NOT NULL,
        service   TEXT NOT NULL,
        version   TEXT NOT NULL,
        PRIMARY KEY (namespace, service)
    );
    CREATE TABLE notifications_delivered (
        key        TEXT PRIMARY KEY,
        at_unix_ms INTEGER NOT NULL
    );",
    // 3: the portal's access requests (the request as JSON, with the columns lists need) and
    // its audit log of grants, requests, approvals and rejections.
    "CREATE TABLE access_requests (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        created_unix_ms INTEGER NOT NULL,
        status     TEXT NOT NULL,
        doc        TEXT NOT NULL
    );
    CREATE TABLE access_audit (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        at_unix_ms INTEGER NOT NULL,
        request_id INTEGER NOT NULL,
        actor      TEXT NOT NULL,
        action     TEXT NOT NULL,
        detail     TEXT NOT NULL
    );",
    // 4: an instance's role (empty, or `baseline` for a rollout's fresh copy of the stable
    // version).
    "ALTER TABLE registrations ADD COLUMN role TEXT NOT NULL DEFAULT '';",
    // 5: ephemeral environments (the document as JSON; see `env::store`).
    "CREATE TABLE environments (
        name      TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        doc       TEXT NOT NULL
    );",
];

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("the controller's store ({path}): {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The database was written by a newer controller.
    #[error(
        "the controller's store ({path}) has schema version {found}, newer than this controller \
         knows ({known}); run a newer sluice, or move the file away to start empty"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: usize,
        /// Ours.
        known: usize,
    },
    /// A blocking task panicked or was cancelled.
    #[error("the controller's store task failed: {0}")]
    Task(String),
}

/// One workload instance's registration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegistrationRow {
    /// Its namespace.
    pub namespace: String,
    /// Its service.
    pub service: String,
    /// Unique per instance.
    pub instance: String,
    /// The version it runs.
    pub version: String,
    /// `stable` or an ephemeral environment.
    pub environment: String,
    /// Empty, or `baseline` for a rollout's fresh copy of the stable version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// `ip:port` it is reachable at.
    pub address: String,
    /// When it (last) registered.
    pub registered_unix_ms: i64,
}

/// One denial as a proxy reports it (already validated), to be aggregated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenialIn {
    /// The caller's namespace (empty for `unauthenticated`).
    pub caller_namespace: String,
    /// The caller's service, or `unauthenticated`.
    pub caller: String,
    /// The callee's namespace.
    pub namespace: String,
    /// The callee.
    pub service: String,
    /// The call, e.g. `POST /v1/charges`.
    pub rpc: String,
    /// The matched endpoint pattern, or empty.
    pub endpoint: String,
    /// The governing policies, comma-separated, or empty for the mesh default.
    pub policies: String,
    /// The caller's environment.
    pub environment: String,
    /// `deny` or `audit-deny`.
    pub verdict: String,
    /// How many identical denials this stands for (at least 1).
    pub count: u32,
    /// When first seen.
    pub first_seen_unix_ms: i64,
    /// A request id, for finding the access log line.
    pub request_id: String,
}

/// An aggregated denial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DenialRow {
    /// The caller's namespace.
    pub caller_namespace: String,
    /// The caller.
    pub caller: String,
    /// The callee's namespace.
    pub namespace: String,
    /// The callee.
    pub service: String,
    /// The call.
    pub rpc: String,
    /// The endpoint pattern, or empty.
    pub endpoint: String,
    /// The governing policies, comma-separated.
    pub policies: String,
    /// The caller's environment.
    pub environment: String,
    /// `deny` or `audit-deny`.
    pub verdict: String,
    /// How many times, in total.
    pub count: i64,
    /// First seen.
    pub first_seen_unix_ms: i64,
    /// Last seen (the controller's clock, when the report arrived).
    pub last_seen_unix_ms: i64,
    /// The latest request id.
    pub last_request_id: String,
    /// The proxy that reported it last.
    pub last_proxy_id: String,
}

/// Totals over the denial table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DenialSummary {
    /// Distinct denials kept.
    pub distinct: i64,
    /// Their counts added up.
    pub total: i64,
    /// Denials the proxies dropped under their rate limit (reported as a number only).
    pub dropped: i64,
    /// The most recently seen, newest first.
    pub recent: Vec<DenialRow>,
}

/// A refused policy change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigErrorRow {
    /// When it was refused.
    pub at_unix_ms: i64,
    /// One line: "2 error(s) in the policy set".
    pub summary: String,
    /// Every diagnostic, rendered as `sluice policy check` prints it (plain text).
    pub rendered: String,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: Arc<Path>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) `STATE_DIR/controller.db` read-write and migrates it.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        // WAL: readers (`sluice status` offline) never block the writer; NORMAL sync is
        // durable against a crash of the process, which is what "crash-safe" means here.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        migrate(&mut conn, &path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::from(path.as_path()),
        })
    }

    /// Opens an existing database read-only (for `sluice status` while no controller runs).
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(DB_FILE);
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::from(path.as_path()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection, synchronously. For the async side use [`Store::run`].
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        // A panic while holding the lock leaves SQLite consistent (the transaction rolls back
        // on drop), so a poisoned lock is still usable.
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut conn).map_err(|source| StoreError::Sqlite {
            path: self.path.to_path_buf(),
            source,
        })
    }

    /// Runs `f` on tokio's blocking pool, off the async workers.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Inserts or replaces an instance's registration.
    pub fn put_registration(&self, r: &RegistrationRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO registrations
                   (namespace, service, instance, version, environment, address, registered_unix_ms,
                    role)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (namespace, service, instance) DO UPDATE SET
                   version = excluded.version, environment = excluded.environment,
                   address = excluded.address, registered_unix_ms = excluded.registered_unix_ms,
                   role = excluded.role",
                params![
                    r.namespace,
                    r.service,
                    r.instance,
                    r.version,
                    r.environment,
                    r.address,
                    r.registered_unix_ms,
                    r.role
                ],
            )
            .map(drop)
        })
    }

    /// Removes an instance's registration (no error if it is gone already).
    pub fn delete_registration(
        &self,
        namespace: &str,
        service: &str,
        instance: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM registrations WHERE namespace = ?1 AND service = ?2 AND instance = ?3",
                params![namespace, service, instance],
            )
            .map(drop)
        })
    }

    /// Every registration, ordered by namespace, service, instance.
    pub fn registrations(&self) -> Result<Vec<RegistrationRow>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT namespace, service, instance, version, environment, address,
                        registered_unix_ms, role
                 FROM registrations ORDER BY namespace, service, instance",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(RegistrationRow {
                    namespace: row.get(0)?,
                    service: row.get(1)?,
                    instance: row.get(2)?,
                    version: row.get(3)?,
                    environment: row.get(4)?,
                    address: row.get(5)?,
                    registered_unix_ms: row.get(6)?,
                    role: row.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Adds a report's denials to the aggregate (identical denials add up their counts), counts
    /// what the proxy dropped, and prunes to [`MAX_DENIALS`]. One transaction.
    pub fn add_denials(
        &self,
        proxy_id: &str,
        denials: &[DenialIn],
        dropped: u64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO denials (caller_namespace, caller, namespace, service, rpc,
                        endpoint, policies, environment, verdict, count, first_seen_unix_ms,
                        last_seen_unix_ms, last_request_id, last_proxy_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (caller_namespace, caller, namespace, service, rpc, endpoint,
                                  policies, environment, verdict) DO UPDATE SET
                        count = count + excluded.count,
                        first_seen_unix_ms = min(first_seen_unix_ms, excluded.first_seen_unix_ms),
                        last_seen_unix_ms = excluded.last_seen_unix_ms,
                        last_request_id = excluded.last_request_id,
                        last_proxy_id = excluded.last_proxy_id",
                )?;
                for d in denials {
                    stmt.execute(params![
                        d.caller_namespace,
                        d.caller,
                        d.namespace,
                        d.service,
                        d.rpc,
                        d.endpoint,
                        d.policies,
                        d.environment,
                        d.verdict,
                        i64::from(d.count.max(1)),
                        d.first_seen_unix_ms,
                        now_ms,
                        d.request_id,
                        proxy_id,
                    ])?;
                }
            }
            if dropped > 0 {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('denials_dropped', ?1)
                     ON CONFLICT (key) DO UPDATE SET
                        value = CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER)",
                    params![i64::try_from(dropped).unwrap_or(i64::MAX).to_string()],
                )?;
            }
            tx.execute(
                "DELETE FROM denials WHERE rowid IN (
                    SELECT rowid FROM denials ORDER BY last_seen_unix_ms DESC LIMIT -1 OFFSET ?1)",
                params![MAX_DENIALS],
            )?;
            tx.commit()
        })
    }

    /// Totals and the `limit` most recently seen denials.
    pub fn denial_summary(&self, limit: i64) -> Result<DenialSummary, StoreError> {
        self.with(|c| {
            let (distinct, total): (i64, i64) = c.query_row(
                "SELECT count(*), coalesce(sum(count), 0) FROM denials",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let dropped: i64 = c
                .query_row(
                    "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'denials_dropped'",
                    [],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let mut stmt = c.prepare(
                "SELECT caller_namespace, caller, namespace, service, rpc, endpoint, policies,
                        environment, verdict, count, first_seen_unix_ms, last_seen_unix_ms,
                        last_request_id, last_proxy_id
                 FROM denials ORDER BY last_seen_unix_ms DESC, count DESC LIMIT ?1",
            )?;
            let recent = stmt
                .query_map(params![limit], |row| {
                    Ok(DenialRow {
                        caller_namespace: row.get(0)?,
                        caller: row.get(1)?,
                        namespace: row.get(2)?,
                        service: row.get(3)?,
                        rpc: row.get(4)?,
                        endpoint: row.get(5)?,
                        policies: row.get(6)?,
                        environment: row.get(7)?,
                        verdict: row.get(8)?,
                        count: row.get(9)?,
                        first_seen_unix_ms: row.get(10)?,
                        last_seen_unix_ms: row.get(11)?,
                        last_request_id: row.get(12)?,
                        last_proxy_id: row.get(13)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(DenialSummary {
                distinct,
                total,
                dropped,
                recent,
            })
        })
    }

    /// Records a refused policy change, keeping the latest [`MAX_CONFIG_ERRORS`].
    pub fn add_config_error(&self, e: &ConfigErrorRow) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO config_errors (at_unix_ms, summary, rendered) VALUES (?1, ?2, ?3)",
                params![e.at_unix_ms, e.summary, e.rendered],
            )?;
            tx.execute(
                "DELETE FROM config_errors WHERE id NOT IN (
                    SELECT id FROM config_errors ORDER BY id DESC LIMIT ?1)",
                params![MAX_CONFIG_ERRORS],
            )?;
            tx.commit()
        })
    }

    /// The latest refused policy change, if any.
    pub fn last_config_error(&self) -> Result<Option<ConfigErrorRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT at_unix_ms, summary, rendered FROM config_errors ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(ConfigErrorRow {
                        at_unix_ms: r.get(0)?,
                        summary: r.get(1)?,
                        rendered: r.get(2)?,
                    })
                },
            )
            .optional()
        })
    }
}

/// Brings the schema up to [`MIGRATIONS`]`.len()`.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let tx = conn.transaction().map_err(err)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        .map_err(err)?;
    let found: usize = tx
        .query_row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map_err(err)?
        .map_or(0, |v| usize::try_from(v).unwrap_or(usize::MAX));
    if found > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known: MIGRATIONS.len(),
        });
    }
    for step in &MIGRATIONS[found..] {
        tx.execute_batch(step).map_err(err)?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![MIGRATIONS.len().to_string()],
    )
    .map_err(err)?;
    tx.commit().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(caller: &str, count: u32) -> DenialIn {
        DenialIn {
            caller_namespace: "shop".into(),
            caller: caller.into(),
            namespace: "shop".into(),
            service: "payments".into(),
            rpc: "GET /v1/charges/42".into(),
            endpoint: "GET /v1/charges/{id}".into(),
            policies: "payments-callers".into(),
            environment: "stable".into(),
            verdict: "deny".into(),
            count,
            first_seen_unix_ms: 1_000,
            request_id: "r1".into(),
        }
    }

    #[test]
    fn registrations_survive_reopening() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let row = RegistrationRow {
            namespace: "shop".into(),
            service: "payments".into(),
            instance: "payments-0".into(),
            version: "v1".into(),
            environment: "stable".into(),
            role: "baseline".into(),
            address: "127.0.0.1:9000".into(),
            registered_unix_ms: 5,
        };
        {
            let store = Store::open(dir.path())?;
            store.put_registration(&row)?;
            store.put_registration(&RegistrationRow {
                address: "127.0.0.1:9001".into(),
                ..row.clone()
            })?;
        }
        let store = Store::open(dir.path())?;
        let rows = store.registrations()?;
        assert_eq!(
            rows.len(),
            1,
            "the same instance registering again replaces"
        );
        assert_eq!(rows[0].address, "127.0.0.1:9001");
        assert_eq!(rows[0].role, "baseline", "the role is kept");
        store.delete_registration("shop", "payments", "payments-0")?;
        assert!(store.registrations()?.is_empty());
        Ok(())
    }

    #[test]
    fn identical_denials_add_up_and_drops_are_counted() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        store.add_denials("p1", &[denial("checkout", 3), denial("checkout", 0)], 2, 10)?;
        store.add_denials("p2", &[denial("checkout", 5), denial("frontend", 1)], 1, 20)?;
        let s = store.denial_summary(10)?;
        assert_eq!((s.distinct, s.total, s.dropped), (2, 10, 3));
        let checkout = s
            .recent
            .iter()
            .find(|d| d.caller == "checkout")
            .ok_or("checkout's denial is kept")?;
        assert_eq!(checkout.count, 9, "a count of 0 means 1");
        assert_eq!(checkout.last_proxy_id, "p2");
        assert_eq!(checkout.last_seen_unix_ms, 20);
        Ok(())
    }

    #[test]
    fn denials_are_bounded() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let many: Vec<DenialIn> = (0..MAX_DENIALS + 5)
            .map(|i| DenialIn {
                rpc: format!("GET /{i}"),
                ..denial("checkout", 1)
            })
            .collect();
        store.add_denials("p1", &many, 0, 10)?;
        store.add_denials("p1", &[denial("newest", 1)], 0, 11)?;
        let s = store.denial_summary(1)?;
        assert_eq!(s.distinct, MAX_DENIALS);
        assert_eq!(s.recent[0].caller, "newest", "the newest is kept");
        Ok(())
    }

    #[test]
    fn config_errors_keep_the_latest() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        assert_eq!(store.last_config_error()?, None);
        for i in 0..MAX_CONFIG_ERRORS + 3 {
            store.add_config_error(&ConfigErrorRow {
                at_unix_ms: i,
                summary: format!("error {i}"),
                rendered: String::new(),
            })?;
        }
        let last = store.last_config_error()?.ok_or("one is kept")?;
        assert_eq!(last.summary, format!("error {}", MAX_CONFIG_ERRORS + 2));
        let kept: i64 =
            store.with(|c| c.query_row("SELECT count(*) FROM config_errors", [], |r| r.get(0)))?;
        assert_eq!(kept, MAX_CONFIG_ERRORS);
        Ok(())
    }

    #[test]
    fn a_newer_schema_is_refused_and_reopening_is_idempotent()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        drop(Store::open(dir.path())?);
        let store = Store::open(dir.path())?;
        store.with(|c| {
            c.execute(
                "UPDATE meta SET value = '999' WHERE key = 'schema_version'",
                [],
            )
            .map(drop)
        })?;
        drop(store);
        match Store::open(dir.path()) {
            Err(StoreError::TooNew { found: 999, .. }) => Ok(()),
            other => Err(format!("expected TooNew, got {other:?}").into()),
        }
    }
}
