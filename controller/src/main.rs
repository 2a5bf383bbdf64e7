//! `sluice`: the command-line interface. Everything lives in the library so tests can run it
//! in-process; this only connects it to the real process.

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = sluice_controller::run(
        std::env::args_os(),
        sluice_controller::Terminal::detect(),
        // Unlocked handles: each write takes the lock briefly, so long-running commands can log
        // from worker threads without deadlocking on a lock held for the whole run.
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    ExitCode::from(code)
}
