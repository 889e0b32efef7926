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

#[test]
fn never_flushing_is_refused_unless_asked_for_by_name() {
    // --flush-interval 0 with the default --flush 0 would keep no frame if the writer died.
    refused(&["--flush-interval", "0"], "flush-interval", "0");
    refused(
        &["--flush-interval", "0", "--flush", "0"],
        "--no-flush",
        "flush 0",
    );
    // --no-flush contradicted by a flush setting.
    refused(&["--no-flush", "--flush", "5"], "flush", "5");
    refused(
        &["--no-flush", "--flush-interval", "2"],
        "flush-interval",
        "2",
    );

    // The same rule for the TOML keys, named as the file names them.
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("never.toml");
    std::fs::write(&file, "[writer]\nflush_interval = 0\n").unwrap();
    refused(
        &["--config", file.to_str().unwrap()],
        "flush_interval",
        "no_flush = true",
    );
    std::fs::write(&file, "[writer]\nno_flush = true\nflush = 3\n").unwrap();
    refused(&["--config", file.to_str().unwrap()], "flush", "3");

    // Asked for by name, on the command line or in the file: it runs, and says what it costs.
    std::fs::write(&file, "[writer]\nno_flush = true\nflush_interval = 0\n").unwrap();
    for opt_in in [
        vec!["--no-flush"],
        vec!["--flush-interval", "0", "--no-flush"],
        vec!["--config", file.to_str().unwrap()],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "acquire",
            "--frames",
            "3",
            "--size",
            "32x16",
            "--path",
            dir.path().to_str().unwrap(),
        ];
        args.extend_from_slice(&opt_in);
        let out = common::run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("warning") && stderr.contains("--no-flush"),
            "{args:?}: no warning naming --no-flush: {stderr:?}"
        );
        assert!(dir.path().join("detflow_0001.h5").is_file());
    }
}

/// The JSON summary's `ring.slots` of a run with `args` (which must succeed).
fn ring_slots_of(args: &[&str], address_space: Option<u64>) -> u64 {
    let mut cmd = common::detflow();
    cmd.args(args).arg("--json");
    if let Some(bytes) = address_space {
        limit_address_space(&mut cmd, bytes);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::summary(&out)["ring"]["slots"].as_u64().unwrap()
}

/// Run the child with at most `bytes` of address space (RLIMIT_AS), so that a large
/// allocation fails in it rather than taking the machine's memory.
fn limit_address_space(cmd: &mut std::process::Command, bytes: u64) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn the_ring_never_has_more_slots_than_frames_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let slots = ring_slots_of(
        &[
            "acquire",
            "--frames",
            "3",
            "--size",
            "64x64",
            "--ring-slots",
            "64",
            "--path",
            path,
            "--name",
            "few",
        ],
        None,
    );
    assert_eq!(slots, 3);
    // 4000 slots of 1024x1024 u16 would be 8.2 GB: with 5 frames the run needs 5 slots, and
    // runs under a 3 GiB address-space limit (the 8.2 GB ring could not be allocated there).
    let slots = ring_slots_of(
        &[
            "acquire",
            "--frames",
            "5",
            "--size",
            "1024x1024",
            "--ring-slots",
            "4000",
            "--path",
            path,
            "--name",
            "big",
        ],
        Some(3 << 30),
    );
    assert_eq!(slots, 5);
    // Automatic sizing too; and --frames 0 (until stopped) keeps the request.
    let slots = ring_slots_of(
        &[
            "acquire", "--frames", "2", "--size", "64x64", "--path", path, "--name", "auto",
        ],
        None,
    );
    assert_eq!(slots, 2);
}

#[test]
fn a_ring_over_the_memory_cap_is_refused_naming_ring_slots_and_the_cap() {
    // 60000 slots of 4096x4096 u16 are 1.9 TB: over a quarter of any machine's MemAvailable.
    refused(
        &[
            "--size",
            "4096x4096",
            "--frames",
            "0",
            "--ring-slots",
            "60000",
        ],
        "ring-slots",
        "60000",
    );
    refused(
        &[
            "--size",
            "4096x4096",
            "--frames",
            "0",
            "--ring-slots",
            "60000",
        ],
        "MemAvailable",
        "or fewer",
    );
}

#[test]
fn a_ring_that_cannot_be_allocated_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    // 300 slots of 2 MiB (600 MiB) in a process allowed 512 MiB of address space: the
    // allocation fails (the ring is within the memory cap of any machine with 2.4 GB free).
    let mut cmd = common::detflow();
    cmd.args([
        "acquire",
        "--frames",
        "400",
        "--size",
        "1024x1024",
        "--ring-slots",
        "300",
        "--path",
        path,
    ]);
    limit_address_space(&mut cmd, 512 << 20);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the 600 MiB ring was allocated");
    assert!(
        stderr.contains("cannot allocate the frame ring") && stderr.contains("--ring-slots"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "a failed allocation left files: {left:?}");
    // So the same command with a ring that fits runs at once, not refused as existing.
    let out = common::run(&[
        "acquire",
        "--frames",
        "4",
        "--size",
        "1024x1024",
        "--ring-slots",
        "4",
        "--path",
        path,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
