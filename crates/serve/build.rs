//! Generates the TF Serving and Open Inference Protocol gRPC types and services from `proto/` with a
//! protoc that ships inside the `protoc-bin-vendored` crate, so builds need no system protoc and no network.

use std::path::PathBuf;

/// Every .proto file under `proto/` that defines a service; the services import the rest.
const PROTOS: &[&str] = &[
    "tensorflow_serving/apis/prediction_service.proto",
    "tensorflow_serving/apis/model_service.proto",
    "kserve/grpc_predict_v2.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("proto");
    let google_include = protoc_bin_vendored::include_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| proto_dir.join(p)).collect();
    // kiln's codec answers INVALID_ARGUMENT, not INTERNAL, for a body that is not protobuf (src/codec.rs).
    let services = tonic_prost_build::configure().codec_path("crate::codec::ProtobufCodec");
    services.build_client(true).build_server(true).compile_with_config(
        config,
        &protos,
        &[proto_dir.clone(), google_include],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
