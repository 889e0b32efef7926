//! Runs the loom models (`src/loom_models.rs`) as part of the ordinary test suite, so that
//! `cargo test --workspace` (the README's test command, and CI's) checks them too.
//!
//! Loom needs the whole crate compiled with `--cfg loom`, so this test runs
//! `RUSTFLAGS="--cfg loom" cargo test -p detflow-ring --release --lib` in a target directory
//! of its own (the main one keeps its normal build) and fails with cargo's output if a model
//! fails.
#![cfg(not(loom))]

use std::path::Path;
use std::process::Command;

#[test]
fn loom_models_pass() {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("loom-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "-p", "detflow-ring", "--release", "--lib"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loom models failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The models are there and ran: a silent zero would hide a broken cfg.
    let ran = stdout
        .lines()
        .filter(|l| l.starts_with("test ") && l.contains("loom") && l.ends_with(" ok"))
        .count();
    assert!(
        ran >= 5,
        "expected the 5 loom models to run, saw:\n{stdout}"
    );
}
