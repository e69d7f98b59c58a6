//! Compiles the agent's gRPC API (proto/kvtier/v1/agent.proto) with protox (pure Rust: no protoc
//! needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto/kvtier/v1/agent.proto");
    let fds = protox::compile(["kvtier/v1/agent.proto"], ["../../proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
