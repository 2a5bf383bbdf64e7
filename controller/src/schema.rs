//! `sluice policy schema [--out DIR]`: the JSON Schema of policy files.

use std::io::Write;
use std::path::Path;

use sluice_policy::resources::Kind;
use sluice_policy::schema;

use crate::{CliError, Outcome, SchemaArgs};

pub(crate) fn run(args: &SchemaArgs, out: &mut dyn Write) -> Result<Outcome, CliError> {
    match &args.out {
        None => out.write_all(pretty(&schema::all()).as_bytes())?,
        Some(dir) => write_all(dir)?,
    }
    Ok(Outcome::Success)
}

/// Writes `<kind>.json` per kind and `all.json` into `dir`, creating it if needed.
fn write_all(dir: &Path) -> Result<(), CliError> {
    let write = |name: &str, value: &serde_json::Value| {
        let path = dir.join(name);
        std::fs::write(&path, pretty(value)).map_err(|source| CliError::Write { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| CliError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    for kind in Kind::ALL {
        write(&schema::file_name(kind), &schema::schema_for(kind))?;
    }
    write(schema::ALL_FILE_NAME, &schema::all())
}

/// Pretty JSON with a final newline: stable, diff-friendly files to commit.
fn pretty(value: &serde_json::Value) -> String {
    // Serialising a `Value` cannot fail: its keys are strings by construction.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}
