//! Rollouts in the controller's SQLite store: the rollout document, its events and analysis
//! points, each service's promoted stable version, and which notifications went out.
//!
//! A rollout changes in one transaction together with the event that explains the change
//! ([`save`]), so a controller killed between deciding and recording cannot leave a decision
//! half made: after a restart the store holds either the old phase (and the engine decides
//! again, identically, from the same points) or the new one with its event.

use rusqlite::{OptionalExtension, params};

use super::model::{Event, Phase, Point, Rollout};
use crate::store::{Store, StoreError};

/// Rollouts kept per service (older ones, with their events and points, are pruned).
pub const KEEP_PER_SERVICE: i64 = 50;

fn to_json<T: serde::Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Writes `rollout` and, if given, appends `event` — one transaction.
pub fn save(store: &Store, rollout: &Rollout, event: Option<&Event>) -> Result<(), StoreError> {
    store.with(|c| {
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO rollouts (id, namespace, service, phase, created_unix_ms, doc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET phase = excluded.phase, doc = excluded.doc",
            params![
                rollout.id,
                rollout.namespace,
                rollout.service,
                rollout.phase.as_str(),
                rollout.created_unix_ms,
                to_json(rollout)?,
            ],
        )?;
        if let Some(e) = event {
            tx.execute(
                "INSERT INTO rollout_events (rollout_id, seq, at_unix_ms, kind, message)
                 VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM rollout_events
                              WHERE rollout_id = ?1), ?2, ?3, ?4)",
                params![rollout.id, e.at_unix_ms, e.kind, e.message],
            )?;
        }
        if rollout.phase == Phase::Promoted {
            tx.execute(
                "INSERT INTO stable_versions (namespace, service, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT (namespace, service) DO UPDATE SET version = excluded.version",
                params![rollout.namespace, rollout.service, rollout.canary_version],
            )?;
        }
        // Prune old finished rollouts of this service.
        tx.execute(
            "DELETE FROM rollouts WHERE id IN (
                SELECT id FROM rollouts WHERE namespace = ?1 AND service = ?2
                ORDER BY created_unix_ms DESC LIMIT -1 OFFSET ?3)",
            params![rollout.namespace, rollout.service, KEEP_PER_SERVICE],
        )?;
        tx.execute(
            "DELETE FROM rollout_events WHERE rollout_id NOT IN (SELECT id FROM rollouts)",
            [],
        )?;
        tx.execute(
            "DELETE FROM rollout_points WHERE rollout_id NOT IN (SELECT id FROM rollouts)",
            [],
        )?;
        tx.commit()
    })
}

/// Appends one analysis point together with the rollout it updated — one transaction.
pub fn save_point(store: &Store, rollout: &Rollout, point: &Point) -> Result<(), StoreError> {
    store.with(|c| {
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO rollout_points (rollout_id, seq, doc)
             VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM rollout_points
                          WHERE rollout_id = ?1), ?2)",
            params![rollout.id, to_json(point)?],
        )?;
        tx.execute(
            "UPDATE rollouts SET phase = ?2, doc = ?3 WHERE id = ?1",
            params![rollout.id, rollout.phase.as_str(), to_json(rollout)?],
        )?;
        tx.commit()
    })
}

/// Every rollout, newest first; only those of `service` when given.
pub fn list(store: &Store, service: Option<(&str, &str)>) -> Result<Vec<Rollout>, StoreError> {
    store.with(|c| {
        let mut out = Vec::new();
        match service {
            Some((ns, svc)) => {
                let mut stmt = c.prepare_cached(
                    "SELECT doc FROM rollouts WHERE namespace = ?1 AND service = ?2
                     ORDER BY created_unix_ms DESC, id DESC",
                )?;
                for doc in stmt.query_map(params![ns, svc], |r| r.get::<_, String>(0))? {
                    out.push(from_json(&doc?)?);
                }
            }
            None => {
                let mut stmt = c.prepare_cached(
                    "SELECT doc FROM rollouts ORDER BY created_unix_ms DESC, id DESC",
                )?;
                for doc in stmt.query_map([], |r| r.get::<_, String>(0))? {
                    out.push(from_json(&doc?)?);
                }
            }
        }
        Ok(out)
    })
}

/// The rollouts that are not over.
pub fn active(store: &Store) -> Result<Vec<Rollout>, StoreError> {
    Ok(list(store, None)?
        .into_iter()
        .filter(|r| r.phase.is_active())
        .collect())
}

/// One rollout.
pub fn get(store: &Store, id: &str) -> Result<Option<Rollout>, StoreError> {
    store.with(|c| {
        let doc: Option<String> = c
            .query_row("SELECT doc FROM rollouts WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?;
        doc.map(|d| from_json(&d)).transpose()
    })
}

/// A rollout's events, oldest first.
pub fn events(store: &Store, id: &str) -> Result<Vec<Event>, StoreError> {
    store.with(|c| {
        let mut stmt = c.prepare_cached(
            "SELECT at_unix_ms, kind, message FROM rollout_events WHERE rollout_id = ?1
             ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![id], |r| {
            Ok(Event {
                at_unix_ms: r.get(0)?,
                kind: r.get(1)?,
                message: r.get(2)?,
            })
        })?;
        rows.collect()
    })
}

/// A rollout's analysis points, oldest first.
pub fn points(store: &Store, id: &str) -> Result<Vec<Point>, StoreError> {
    store.with(|c| {
        let mut stmt =
            c.prepare_cached("SELECT doc FROM rollout_points WHERE rollout_id = ?1 ORDER BY seq")?;
        let mut out = Vec::new();
        for doc in stmt.query_map(params![id], |r| r.get::<_, String>(0))? {
            out.push(from_json(&doc?)?);
        }
        Ok(out)
    })
}

/// A service's promoted stable version: ((namespace, service), version).
pub type StableVersion = ((String, String), String);

/// Each service's promoted stable version.
pub fn stable_versions(store: &Store) -> Result<Vec<StableVersion>, StoreError> {
    store.with(|c| {
        let mut stmt =
            c.prepare_cached("SELECT namespace, service, version FROM stable_versions")?;
        let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
        rows.collect()
    })
}

/// The notifier's delivery log in the store, so "never twice" survives restarts.
#[derive(Clone)]
pub struct StoreDeliveryLog(pub Store);

impl crate::notify::DeliveryLog for StoreDeliveryLog {
    fn already_delivered(&self, key: &str) -> bool {
        self.0
            .with(|c| {
                c.query_row(
                    "SELECT 1 FROM notifications_delivered WHERE key = ?1",
                    params![key],
                    |_| Ok(()),
                )
                .optional()
            })
            .map(|found| found.is_some())
            // Unknown is treated as not delivered: a rare duplicate beats a lost rollback
            // message.
            .unwrap_or(false)
    }

    fn mark_delivered(&self, key: &str) {
        let now = crate::store::unix_ms(std::time::SystemTime::now());
        let result = self.0.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO notifications_delivered (key, at_unix_ms) VALUES (?1, ?2)",
                params![key, now],
            )
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot record a delivered notification");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::model::StepPlan;

    pub(crate) fn rollout(id: &str, created: i64, phase: Phase) -> Rollout {
        Rollout {
            id: id.into(),
            namespace: "default".into(),
            service: "payments".into(),
            baseline_version: "v1".into(),
            canary_version: "v2".into(),
            phase,
            step: 0,
            weight: 5,
            steps: vec![StepPlan {
                weight: 5,
                duration_ms: 30_000,
                confirm: false,
            }],
            interval_ms: 5_000,
            progress_deadline_ms: 600_000,
            policy: "payments".into(),
            analysis: Default::default(),
            on_failure: Default::default(),
            requested_by: "test".into(),
            created_unix_ms: created,
            updated_unix_ms: created,
            step_started_unix_ms: created,
            first_traffic_unix_ms: None,
            finished_unix_ms: None,
            decision: String::new(),
            evidence: Vec::new(),
            failed_check: None,
            failed_checks: Vec::new(),
            baseline: Default::default(),
            canary_requests: 0,
            baseline_requests: 0,
        }
    }

    #[test]
    fn rollouts_events_points_and_stable_versions_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let mut r = rollout("r-1", 1, Phase::Progressing);
        let event = Event {
            at_unix_ms: 1,
            kind: "started".into(),
            message: "started".into(),
        };
        save(&store, &r, Some(&event)).expect("save");
        let point = Point {
            at_unix_ms: 2,
            step: 0,
            weight: 5,
            canary: crate::rollout::judge::Counts::empty(),
            baseline: crate::rollout::judge::Counts::empty(),
            baseline_weight: None,
            reference: None,
        };
        save_point(&store, &r, &point).expect("point");
        save(&store, &rollout("r-2", 2, Phase::Aborted), None).expect("save");
        r.phase = Phase::Promoted;
        save(&store, &r, None).expect("save");

        // Reopened, as after a restart.
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        let all = list(&store, None).expect("list");
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["r-2", "r-1"]
        );
        assert!(active(&store).expect("active").is_empty());
        assert_eq!(get(&store, "r-1").expect("get"), Some(r));
        assert_eq!(events(&store, "r-1").expect("events"), [event]);
        assert_eq!(points(&store, "r-1").expect("points"), [point]);
        assert_eq!(
            stable_versions(&store).expect("stable"),
            [(("default".into(), "payments".into()), "v2".into())]
        );
    }

    #[test]
    fn delivered_notifications_survive_a_reopen() {
        use crate::notify::DeliveryLog;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = StoreDeliveryLog(Store::open(dir.path()).expect("store"));
        assert!(!log.already_delivered("a"));
        log.mark_delivered("a");
        let log = StoreDeliveryLog(Store::open(dir.path()).expect("reopen"));
        assert!(log.already_delivered("a"));
    }
}
