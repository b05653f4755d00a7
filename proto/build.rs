//! Generates the Rust types of proto/trackline/v1 with prost, parsing the .proto files with
//! protox so that a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["trackline/v1/trackline.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
