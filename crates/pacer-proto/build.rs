//! Compiles proto/pacer/v1/coordinator.proto with protox (pure Rust: no system protoc) and
//! generates the prost messages and the tonic client and server.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .join("..")
        .join("..")
        .join("proto");
    let file = root.join("pacer").join("v1").join("coordinator.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        // Holds a bearer token: its Debug is written by hand in lib.rs and never shows it.
        .skip_debug(["pacer.v1.TokenGrant"])
        .compile_fds(fds)?;
    Ok(())
}
