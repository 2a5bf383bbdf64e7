//! `sluice`: the command-line interface. Everything lives in the library so tests can run it
//! in-process; this only connects it to the real process.

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = sluice_controller::run(
        std::env::args_os(),
        sluice_controller::Terminal::detect(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}
