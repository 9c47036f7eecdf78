//! `include/shiftnn.h` must be what cbindgen generates from the current
//! source. `SHIFTNN_BLESS=1 cargo test -p shiftnn-capi --test header`
//! rewrites it.

use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen failed")
        .write(&mut out);
    let path = dir.join("include/shiftnn.h");
    if std::env::var_os("SHIFTNN_BLESS").is_some() {
        std::fs::write(&path, &out).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == out,
        "capi/include/shiftnn.h is stale: run SHIFTNN_BLESS=1 cargo test -p shiftnn-capi --test header"
    );
}
