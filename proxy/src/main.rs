//! `sluice-proxy`: the transparent sidecar in front of every workload.

fn main() {
    let _ = sluice_policy::resources::API_VERSION;
}
