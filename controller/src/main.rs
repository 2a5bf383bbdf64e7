//! `sluice`: the control plane and the command-line interface.

fn main() {
    let _ = sluice_policy::resources::API_VERSION;
}
