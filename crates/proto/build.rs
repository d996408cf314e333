//! Compiles every `.proto` under the workspace's `proto/` directory into `OUT_DIR`.
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs no set-up; a `PROTOC`
//! in the environment (e.g. Debian's protobuf-compiler) takes precedence.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "borough/user/v1/user.proto",
    "borough/user/v1/tenant_admin.proto",
    "borough/query/v1/query.proto",
    "borough/config/v1/config.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .join("../../proto")
        .canonicalize()?;
    let files: Vec<PathBuf> = PROTOS.iter().map(|f| root.join(f)).collect();

    let mut config = tonic_prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    // google/protobuf/*.proto ship with the vendored protoc.
    let well_known = protoc_bin_vendored::include_path()?;

    tonic_prost_build::configure().compile_with_config(
        config,
        &files,
        &[root.clone(), well_known],
    )?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
