//! Compiles every `.proto` under the workspace's `proto/` directory into `OUT_DIR`.
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs no set-up; a `PROTOC`
//! in the environment (e.g. Debian's protobuf-compiler) takes precedence.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "borough/user/v1/resources.proto",
    "borough/user/v1/user.proto",
    "borough/user/v1/tenant_admin.proto",
    "borough/query/v1/query.proto",
];

/// Messages holding an API key or a database URL: no derived `Debug`.
const SECRET_BEARING: [&str; 3] = [
    ".borough.user.v1.IssuedApiKey",
    ".borough.user.v1.CreateTenantRequest",
    ".borough.user.v1.AuthenticateApiKeyRequest",
];

/// Compiled with [`LEAN_CODEC`]: services holding many long-lived streams.
const LEAN_PROTOS: &[&str] = &["borough/config/v1/config.proto"];
const LEAN_CODEC: &str = "crate::codec::LeanCodec";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .join("../../proto")
        .canonicalize()?;
    // google/protobuf/*.proto ship with the vendored protoc.
    let well_known = protoc_bin_vendored::include_path()?;
    let includes = [root.clone(), well_known];
    for (protos, codec) in [(PROTOS, None), (LEAN_PROTOS, Some(LEAN_CODEC))] {
        let files: Vec<PathBuf> = protos.iter().map(|f| root.join(f)).collect();
        let mut config = tonic_prost_build::Config::new();
        match std::env::var_os("PROTOC") {
            Some(protoc) => config.protoc_executable(protoc),
            None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
        };
        // Messages carrying secrets get a hand-written `Debug` that hides them (src/lib.rs).
        let mut builder = tonic_prost_build::configure().skip_debug(SECRET_BEARING);
        if let Some(codec) = codec {
            builder = builder.codec_path(codec);
        }
        builder.compile_with_config(config, &files, &includes)?;
    }
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
