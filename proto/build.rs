//! Compiles the gRPC contracts with the vendored protoc, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // tonic-prost-build runs protoc from $PROTOC.
    std::env::set_var("PROTOC", protoc);
    let files = [
        "proto/common.proto",
        "proto/node.proto",
        "proto/cluster.proto",
        "proto/cloud.proto",
        "proto/storage.proto",
        "proto/walrus.proto",
    ];
    tonic_prost_build::configure().compile_protos(&files, &["proto"])?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
