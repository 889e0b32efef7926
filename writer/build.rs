//! Sets `cfg(rustc_1_89)` when the compiler has the AVX-512 and GFNI intrinsics (stable since
//! Rust 1.89): the bitshuffle transform's AVX-512 kernel is built only then, so the crate
//! still builds with the workspace's older minimum Rust, without that kernel.

fn main() {
    autocfg::new().emit_rustc_version(1, 89);
    println!("cargo:rerun-if-changed=build.rs");
}
