//! Compiles the repository's `proto/` with protox (pure Rust: no system `protoc`), generates the tonic client and
//! server, and writes the encoded descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The contract lives at the repository root (`proto/`), where `buf lint` reads it too.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = "keyauth/v1/keyauth.proto";
    println!("cargo:rerun-if-changed={}", root.display());

    let mut compiler = protox::Compiler::new([&root])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_file(proto)?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("keyauth_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        // Maps as BTreeMap: a message then always encodes to the same bytes, which the
        // idempotency fingerprint relies on.
        .btree_map(".")
        // These messages carry a full key: their `Debug` is written by hand and redacts it.
        .skip_debug([
            "keyauth.v1.IssueKeyResponse",
            "keyauth.v1.RollKeyResponse",
            "keyauth.v1.VerifyRequest",
            "keyauth.v1.CheckPermissionRequest",
            "keyauth.v1.ReportExposedKeysRequest",
        ])
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
