//! Bad settings are refused with a message naming the setting and the value, before any file
//! is created.

mod common;

fn refused(extra: &[&str], setting: &str, value: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "acquire",
        "--frames",
        "3",
        "--path",
        dir.path().to_str().unwrap(),
    ];
    if !extra.contains(&"--size") {
        args.extend_from_slice(&["--size", "32x16"]);
    }
    args.extend_from_slice(extra);
    let out = common::run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(
        stderr.contains(setting) && stderr.contains(value),
        "{args:?}: message {stderr:?} does not name {setting} and {value}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{args:?} left files behind: {left:?}");
}

#[test]
fn each_bad_setting_is_named() {
    refused(&["--dtype", "u64"], "dtype", "u64");
    refused(&["--dtype", "float"], "dtype", "float");
    refused(&["--size", "0x16"], "size", "0x16");
    refused(&["--size", "32"], "size", "32");
    refused(&["--size", "100000x4"], "size", "100000x4");
    refused(&["--template", "%s%s_%q.h5"], "template", "%s%s_%q.h5");
    refused(&["--template", "%d%s%s.h5"], "template", "%d%s%s.h5");
    refused(&["--codec", "deflate:42"], "codec", "deflate:42");
    refused(&["--codec", "lzma"], "codec", "lzma");
    refused(&["--mode", "stripes"], "mode", "stripes");
    refused(&["--exposure", "-2"], "exposure", "-2");
    refused(&["--ring-slots", "100000"], "ring-slots", "100000");
    refused(&["--name", "a/b"], "name", "a/b");
    refused(&["--frames", "many"], "--frames", "many");
}

#[test]
fn an_unusable_path_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("does-not-exist");
    let out = common::run(&[
        "acquire",
        "--frames",
        "2",
        "--size",
        "8x8",
        "--path",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid path") && stderr.contains("does-not-exist"),
        "{stderr}"
    );
    assert!(!missing.exists());

    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let out = common::run(&[
        "acquire",
        "--frames",
        "2",
        "--size",
        "8x8",
        "--path",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid path") && stderr.contains("not a directory"),
        "{stderr}"
    );

    // A read-only directory (as root, permissions are not enforced, so use a read-only
    // file system when one exists: /proc is one on Linux).
    let out = common::run(&[
        "acquire", "--frames", "2", "--size", "8x8", "--path", "/proc",
    ]);
    assert!(!out.status.success(), "writing into /proc was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid path") && stderr.contains("/proc"),
        "{stderr}"
    );
}
