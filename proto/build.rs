//! Code generation for the gRPC contracts without a `protoc` binary: the
//! `.proto` files are compiled by the pure-Rust `protox` compiler into a
//! FileDescriptorSet which tonic-prost-build turns into Rust.

const PROTO_FILES: &[&str] = &[
    "starling/bus/v1/bus.proto",
    "starling/common/v1/common.proto",
    "starling/storage/v1/storage.proto",
    "starling/router/v1/router.proto",
    "starling/presence/v1/presence.proto",
    "starling/admin/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto_file in PROTO_FILES {
        println!("cargo:rerun-if-changed={proto_file}");
    }
    let file_descriptor_set = protox::compile(PROTO_FILES, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(file_descriptor_set)?;
    Ok(())
}
