//! Compiles the pool's control-plane API (proto/kvtier/v1/pool.proto) with protox (pure Rust: no
//! protoc needed), and with feature `ucx` generates bindings to the system's UCX (libucx-dev).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto/kvtier/v1/pool.proto");
    let fds = protox::compile(["kvtier/v1/pool.proto"], ["../../proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    #[cfg(feature = "ucx")]
    ucx()?;
    Ok(())
}

#[cfg(feature = "ucx")]
fn ucx() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rustc-link-lib=ucp");
    println!("cargo:rustc-link-lib=ucs");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    bindgen::Builder::default()
        .header_contents("kvtier_ucx.h", "#include <ucp/api/ucp.h>\n")
        .allowlist_function("ucp_.*|ucs_status_string")
        .allowlist_type("ucp_.*|ucs_status_t|ucs_thread_mode_t")
        .allowlist_var("UCP_.*|UCS_.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .generate()
        .map_err(|e| {
            format!("generating UCX bindings failed ({e}); install the UCX headers: apt-get install libucx-dev libclang-dev")
        })?
        .write_to_file(out.join("ucx.rs"))?;
    Ok(())
}
