//! Compiles `proto/quarry/v1/*.proto` with a pure-Rust protobuf compiler (protox), so a fresh
//! machine needs no system `protoc`. The encoded descriptor set is written to OUT_DIR as well,
//! because the gRPC reflection service serves it.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/quarry/v1/quarry.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("quarry_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Every message knows its proto name (prost::Name): the JSON API finds its descriptor by it.
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Undecodable requests are INVALID_ARGUMENT, not INTERNAL (see src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::StrictCodec")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
