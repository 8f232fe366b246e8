//! Drift test: regenerates the Rust code and descriptor set from `proto/` with protox
//! (no system `protoc`) and compares them byte for byte with the checked-in files in
//! `src/gen/`. Run with `BLESS=1` to rewrite the checked-in files after editing a `.proto`.

use std::path::{Path, PathBuf};

const FILES: &[&str] = &[
    "nems/core/v1/types.proto",
    "nems/core/v1/subscriptions.proto",
    "nems/core/v1/events.proto",
    "nems/core/v1/deliveries.proto",
    "nems/core/v1/directory.proto",
    "nems/core/v1/operator.proto",
];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate(out: &Path) -> Vec<u8> {
    let mut compiler = protox::Compiler::new([crate_dir()]).expect("protox compiler");
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(FILES).expect("proto files compile");
    let descriptor = compiler.encode_file_descriptor_set();
    tonic_prost_build::configure()
        .build_transport(false)
        // Message payloads as `bytes::Bytes`: decoded without a copy from the gRPC frame,
        // and handed on (edge → core, core → adapter) without another.
        .bytes(".nems.core.v1.PublishEventRequest.payload")
        .bytes(".nems.core.v1.PublishBundleRequest.bundle")
        .bytes(".nems.core.v1.Delivery.payload")
        .bytes(".nems.core.v1.InjectDeliveryRequest.payload")
        .out_dir(out)
        .compile_fds(compiler.file_descriptor_set())
        .expect("code generation");
    descriptor
}

#[test]
fn checked_in_code_matches_proto_files() {
    let tmp = tempfile::tempdir().unwrap();
    let descriptor = generate(tmp.path());
    let generated = std::fs::read(tmp.path().join("nems.core.v1.rs")).unwrap();
    let gen_dir = crate_dir().join("src/gen");
    let code_path = gen_dir.join("nems.core.v1.rs");
    let fds_path = gen_dir.join("nems.core.v1.fds.bin");

    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(&gen_dir).unwrap();
        std::fs::write(&code_path, &generated).unwrap();
        std::fs::write(&fds_path, &descriptor).unwrap();
        return;
    }
    let checked_in = std::fs::read(&code_path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is stale: run `BLESS=1 cargo test -p nems-proto --test codegen` and commit",
        code_path.display()
    );
    let checked_in_fds = std::fs::read(&fds_path).unwrap_or_default();
    assert!(
        checked_in_fds == descriptor,
        "{} is stale: run `BLESS=1 cargo test -p nems-proto --test codegen` and commit",
        fds_path.display()
    );
}
