//! The committed header `ffi/include/kvtier.h` is what cbindgen generates from the sources.
//! After changing the ABI, regenerate it with `KVTIER_BLESS=1 cargo test -p kvtier-ffi --test header`.

#[test]
fn committed_header_is_current() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config =
        cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("ffi/cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut generated);
    let path = format!("{dir}/include/kvtier.h");
    if std::env::var_os("KVTIER_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "ffi/include/kvtier.h is stale: regenerate it with `KVTIER_BLESS=1 cargo test -p kvtier-ffi --test header` and commit it"
    );
}
