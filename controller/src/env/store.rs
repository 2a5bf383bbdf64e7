//! Environments in the controller's SQLite store: one row per environment, the
//! [`Environment`] document as JSON. Written on every change (creation, a copy added or
//! removed, requests counted), so a restarted controller has every environment with its idle
//! clock where it was.

use rusqlite::params;

use super::model::Environment;
use crate::store::{Store, StoreError};

fn json_error(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

/// Writes `env` (insert or replace).
pub fn save(store: &Store, env: &Environment) -> Result<(), StoreError> {
    store.with(|c| {
        c.execute(
            "INSERT INTO environments (name, namespace, created_unix_ms, doc)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET namespace = excluded.namespace, doc = excluded.doc",
            params![
                env.name,
                env.namespace,
                env.created_unix_ms,
                serde_json::to_string(env).map_err(json_error)?
            ],
        )
        .map(drop)
    })
}

/// Removes the environment `name` (no error if it is gone).
pub fn delete(store: &Store, name: &str) -> Result<(), StoreError> {
    store.with(|c| {
        c.execute("DELETE FROM environments WHERE name = ?1", params![name])
            .map(drop)
    })
}

/// Every environment, by name. A row that does not parse (written by a newer controller) is
/// skipped with a warning rather than hiding the others.
pub fn load(store: &Store) -> Result<Vec<Environment>, StoreError> {
    let rows: Vec<(String, String)> = store.with(|c| {
        let mut stmt = c.prepare("SELECT name, doc FROM environments ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, doc)| match serde_json::from_str(&doc) {
            Ok(env) => Some(env),
            Err(e) => {
                tracing::warn!(environment = name, error = %e, "skipping an environment the store cannot read");
                None
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::model::{Copy, Origin};
    use crate::instance::Run;

    #[test]
    fn environments_round_trip_through_a_reopened_store() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
        let mut env = Environment {
            name: "pr-1".into(),
            namespace: "default".into(),
            service: "checkout".into(),
            created_by: "ernie".into(),
            created_unix_ms: 5,
            idle_timeout_ms: Some(60_000),
            created_by_run: false,
            copies: vec![Copy {
                service: "checkout".into(),
                version: "v1".into(),
                run: Run::Command {
                    argv: vec!["/bin/shop".into(), "checkout".into()],
                    dir: "/src".into(),
                    env: Default::default(),
                },
                origin: Origin::Service,
                generation: 2,
                lease_until_unix_ms: None,
                replaced: None,
            }],
            last_request_unix_ms: Some(7),
            requests_total: 3,
            recent: vec![(0, 3)],
        };
        {
            let store = Store::open(dir.path())?;
            save(&store, &env)?;
            env.requests_total = 4;
            save(&store, &env)?;
        }
        let store = Store::open(dir.path())?;
        assert_eq!(load(&store)?, [env]);
        delete(&store, "pr-1")?;
        delete(&store, "pr-1")?;
        assert!(load(&store)?.is_empty());
        Ok(())
    }
}
