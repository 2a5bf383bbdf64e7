//! `sluice policy explain`: placeholder until the snapshot API lands.

use std::io::Write;

use crate::{CliError, ExplainArgs, Outcome, Terminal};

pub(crate) fn run(
    _args: &ExplainArgs,
    _terminal: Terminal,
    _out: &mut dyn Write,
    _err: &mut dyn Write,
) -> Result<Outcome, CliError> {
    Err(CliError::PolicyInvalid)
}
