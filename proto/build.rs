fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=clustermesh/v1/clustermesh.proto");
    if std::process::Command::new(std::env::var("PROTOC").unwrap_or_else(|_| "protoc".into()))
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("protoc not found: install Debian's protobuf-compiler (scripts/install-deps.sh) or set PROTOC".into());
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Record payloads travel as opaque, already-encoded bytes: shared by
        // reference count between the view and every subscriber, never re-encoded.
        .bytes(".clustermesh.v1.Event.value")
        // Deterministic encoding: equal records give equal bytes.
        .btree_map(".")
        .compile_protos(&["clustermesh/v1/clustermesh.proto"], &["."])?;
    Ok(())
}
