//! Generates the payments gRPC client and server from `proto/`. protoc comes from the
//! `protoc-bin-vendored` crate (as in `api/build.rs`), so building needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/payments/v1/payments.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
