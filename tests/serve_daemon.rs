//! `detflow serve` driven over Channel Access by a raw client (the CA crate's probe), on
//! 127.0.0.1 with a port of its own per test: settings refused before anything is served,
//! the readbacks the clients rely on, data roots, the truth of the counters and of
//! `DroppedArrays_RBV`, put-callback completion, and a signal mid-capture.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::ca::{Client, DBR_CHAR, DBR_DOUBLE, DBR_STRING, Put, num, text};
use detflow_ca::Eca;
use detflow_ca::probe::Probe;
use detflow_ca::proto::{Header, cmd};

/// The daemon, killed when dropped (a test that fails still cleans up).
struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Start `detflow serve` on a port of its own (any free one, read from its `ready` log
    /// line) with `args`, and wait until it answers.
    fn start(dir: &Path, args: &[&str]) -> Daemon {
        let log = dir.join("daemon.log");
        let child = common::detflow()
            .arg("serve")
            .args(["--ca-port", "0", "--preview-rate", "2"])
            .args(args)
            .env("EPICS_CAS_INTF_ADDR_LIST", "127.0.0.1")
            .env("EPICS_CAS_BEACON_ADDR_LIST", "127.0.0.1")
            .env("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("detflow serve starts");
        let mut daemon = Daemon {
            child,
            port: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.port == 0 {
            let text = daemon.log();
            if let Some(rest) = text.split(" on port ").nth(1) {
                daemon.port = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not say it was ready in 30 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Probe::connect(daemon.addr()).expect("the daemon answers on the port it logged");
        daemon
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn client(&self) -> Client {
        Client::connect(self.addr(), self.log.clone())
    }

    /// SIGTERM, and the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn frames_in(file: &str) -> Vec<usize> {
    hdf5::File::open(file)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .dataset("/entry/data/data")
        .unwrap()
        .shape()
}

#[test]
fn bad_settings_are_refused_before_anything_is_served() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--data-root", "/no/such/dir"],
            "data-root",
            "/no/such/dir",
        ),
        (&["--preview-rate=-1"], "preview-rate", "-1"),
        (&["--size", "0x5"], "size", "0x5"),
        (&["--dtype", "u17"], "dtype", "u17"),
        (&["--prefix", "a b"], "prefix", "a b"),
    ];
    for (args, setting, value) in cases {
        let out = common::detflow()
            .arg("serve")
            .args(["--ca-port", "1"])
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains(setting) && err.contains(value),
            "{args:?}: the error must name {setting} and the value: {err}"
        );
    }
}

#[test]
fn starts_primed_with_a_connected_port_graph() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let d = Daemon::start(dir.path(), &["--data-root", root, "--size", "64x48"]);
    let mut c = d.client();
    for (cam, hdf) in [
        ("cam1:ArraySizeX_RBV", "HDF1:ArraySize0_RBV"),
        ("cam1:ArraySizeY_RBV", "HDF1:ArraySize1_RBV"),
        ("cam1:ArraySizeZ_RBV", "HDF1:ArraySize2_RBV"),
    ] {
        assert_eq!(c.num(cam), c.num(hdf), "{cam} vs {hdf}");
    }
    assert_eq!(c.num("cam1:ArraySizeX_RBV"), 64.0);
    assert_eq!(c.num("cam1:ArraySizeY_RBV"), 48.0);
    assert_eq!(c.text("cam1:DataType_RBV"), "UInt16");
    assert_eq!(c.text("HDF1:DataType_RBV"), "UInt16");
    assert_eq!(c.text("HDF1:ColorMode_RBV"), c.text("cam1:ColorMode_RBV"));
    let cam = c.text("cam1:PortName_RBV");
    assert_eq!(c.text("HDF1:NDArrayPort_RBV"), cam);
    assert_eq!(c.text("image1:NDArrayPort_RBV"), cam);
    assert_ne!(c.text("HDF1:PortName_RBV"), c.text("image1:PortName_RBV"));
    assert!(c.text("HDF1:PluginType_RBV").starts_with("NDFileHDF5"));
    assert!(
        c.text("image1:PluginType_RBV")
            .starts_with("NDPluginStdArrays")
    );
    assert_eq!(c.num("cam1:AcquireBusy"), 0.0);
    assert_eq!(c.text("cam1:DetectorState_RBV"), "Idle");
    // A setpoint echoes to its readback; a change of the cam's size reaches the plugin.
    c.put("cam1:SizeX", num(32.0));
    assert_eq!(c.num("cam1:SizeX_RBV"), 32.0);
    assert_eq!(c.num("HDF1:ArraySize0_RBV"), 32.0);
    // A bad value is refused and says why.
    let id = c.put_nowait("cam1:SizeX", &num(100_000.0));
    assert_ne!(c.completed(id, Duration::from_secs(5)), Eca::Normal.code());
    assert!(c.text("cam1:StatusMessage_RBV").contains("SizeX"));
    assert_eq!(c.num("cam1:SizeX_RBV"), 32.0);
}

#[test]
fn writes_only_under_its_data_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir(&root).unwrap();
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    let d = Daemon::start(
        dir.path(),
        &["--data-root", root.to_str().unwrap(), "--size", "32x32"],
    );
    let mut c = d.client();
    for path in [
        outside.to_str().unwrap().to_owned(),
        format!("{}/../elsewhere", root.display()),
    ] {
        c.put("HDF1:FilePath", text(&path));
        assert_eq!(c.num("HDF1:FilePathExists_RBV"), 0.0, "{path}");
        assert!(
            c.text("HDF1:WriteMessage")
                .contains("outside the data roots"),
            "{}",
            c.text("HDF1:WriteMessage")
        );
        let id = c.put_nowait("HDF1:Capture", &num(1.0));
        assert_ne!(c.completed(id, Duration::from_secs(5)), Eca::Normal.code());
        assert_eq!(c.num("HDF1:Capture_RBV"), 0.0);
    }
    // A symbolic link inside the root that leads out is outside too.
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    c.put("HDF1:FilePath", text(root.join("link").to_str().unwrap()));
    assert_eq!(c.num("HDF1:FilePathExists_RBV"), 0.0);
    // Inside: CreateDirectory makes the missing levels.
    c.put("HDF1:CreateDirectory", num(-3.0));
    let inside = root.join("a/b");
    c.put("HDF1:FilePath", text(inside.to_str().unwrap()));
    assert_eq!(c.num("HDF1:FilePathExists_RBV"), 1.0);
    assert_eq!(
        c.text("HDF1:FilePath_RBV"),
        format!("{}/", inside.display())
    );
    assert!(inside.is_dir());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

/// FileTemplate, FileName and TempSuffix cannot take a file out of the data roots either:
/// the full name (template applied, `..` and links resolved) is checked when the capture
/// opens, and again by the writer as each file and directory is created.
#[test]
fn every_file_name_stays_under_the_data_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    let d = Daemon::start(
        dir.path(),
        &["--data-root", root.to_str().unwrap(), "--size", "32x32"],
    );
    let mut c = d.client();
    c.put("HDF1:FilePath", text(root.to_str().unwrap()));
    c.put("HDF1:FileWriteMode", num(2.0));
    c.put("HDF1:NumCapture", num(2.0));
    c.put("HDF1:CreateDirectory", num(-5.0));
    let cases = [
        ("HDF1:FileTemplate", "%s../outside/%s_%4.4d.h5", "escape"),
        ("HDF1:FileTemplate", "/elsewhere/%.0s%s_%4.4d.h5", "escape"),
        ("HDF1:FileTemplate", "%slink/%s_%4.4d.h5", "escape"),
        ("HDF1:FileName", "../outside/evil", "evil"),
        ("HDF1:FileTemplate", "%slink/new/%s_%4.4d.h5", "escape"),
        ("HDF1:TempSuffix", "/../../outside/tmp", "escape"),
    ];
    for (pv, value, name) in cases {
        c.put("HDF1:FileTemplate", text("%s%s_%4.4d.h5"));
        c.put("HDF1:FileName", text(name));
        c.put("HDF1:TempSuffix", text(""));
        c.put(pv, text(value));
        let id = c.put_nowait("HDF1:Capture", &num(1.0));
        assert_ne!(
            c.completed(id, Duration::from_secs(5)),
            Eca::Normal.code(),
            "{pv}={value:?}: Capture accepted"
        );
        assert_eq!(c.num("HDF1:Capture_RBV"), 0.0, "{pv}={value:?}");
        assert_eq!(c.num("HDF1:WriteStatus"), 1.0, "{pv}={value:?}");
        let message = c.text("HDF1:WriteMessage");
        assert!(
            message.contains(pv) && message.contains("outside the data roots"),
            "{pv}={value:?}: {message}"
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "{pv}={value:?}"
        );
        assert!(!Path::new("/elsewhere").exists());
    }
    // The same settings inside the root still write.
    c.put("HDF1:FileTemplate", text("%s%s_%4.4d.h5"));
    c.put("HDF1:FileName", text("ok"));
    c.put("HDF1:TempSuffix", text(""));
    let id = c.put_nowait("HDF1:Capture", &num(1.0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.num("HDF1:Capture_RBV") != 1.0 {
        assert!(Instant::now() < deadline, "Capture_RBV never rose");
    }
    c.put("HDF1:Capture", num(0.0));
    assert_eq!(c.completed(id, Duration::from_secs(10)), Eca::Normal.code());
    assert!(
        c.text("HDF1:FullFileName_RBV")
            .starts_with(root.to_str().unwrap())
    );
}

/// Configure a Multiple acquisition of `n` frames captured into `dir`.
fn configure(c: &mut Client, dir: &Path, n: f64) {
    c.put("HDF1:FilePath", text(dir.to_str().unwrap()));
    c.put("HDF1:FileName", text("run"));
    c.put("HDF1:FileTemplate", text("%s%s_%3.3d.h5"));
    c.put("HDF1:FileNumber", num(7.0));
    c.put("HDF1:AutoIncrement", num(1.0));
    c.put("HDF1:FileWriteMode", num(2.0));
    c.put("HDF1:NumCapture", num(n));
    c.put("HDF1:Compression", num(3.0));
    c.put("cam1:ImageMode", num(1.0));
    c.put("cam1:NumImages", num(n));
    c.put("cam1:AcquirePeriod", num(0.005));
    c.put("cam1:WaitForPlugins", num(1.0));
}

#[test]
fn acquire_completes_after_the_file_is_closed_and_the_counters_tell_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let d = Daemon::start(dir.path(), &["--data-root", root, "--size", "64x32"]);
    let mut c = d.client();
    configure(&mut c, dir.path(), 6.0);
    let counter0 = c.num("cam1:ArrayCounter_RBV");
    let capture = c.put_nowait("HDF1:Capture", &num(1.0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.num("HDF1:Capture_RBV") != 1.0 {
        assert!(Instant::now() < deadline, "Capture_RBV never rose");
    }
    let expected = format!("{root}/run_007.h5");
    assert_eq!(c.text("HDF1:FullFileName_RBV"), expected);
    assert_eq!(c.num("HDF1:FileNumber_RBV"), 8.0, "AutoIncrement at open");
    c.put("cam1:Acquire", num(1.0));
    // The put-callback came back: the run is over and the file closed.
    assert_eq!(c.num("cam1:AcquireBusy"), 0.0);
    assert_eq!(c.num("cam1:Acquire_RBV"), 0.0);
    assert_eq!(c.text("cam1:DetectorState_RBV"), "Idle");
    assert_eq!(
        c.completed(capture, Duration::from_secs(10)),
        Eca::Normal.code()
    );
    assert_eq!(c.num("HDF1:Capture_RBV"), 0.0);
    assert_eq!(c.num("HDF1:NumCaptured_RBV"), 6.0);
    assert_eq!(c.num("cam1:ArrayCounter_RBV"), counter0 + 6.0);
    assert_eq!(c.num("HDF1:DroppedArrays_RBV"), 0.0);
    assert_eq!(c.text("HDF1:WriteStatus"), "Write OK");
    assert_eq!(frames_in(&expected), vec![6, 32, 64]);
    // A second capture takes the next number and overwrites nothing.
    let before = std::fs::metadata(&expected).unwrap().modified().unwrap();
    let capture = c.put_nowait("HDF1:Capture", &num(1.0));
    c.put("cam1:Acquire", num(1.0));
    assert_eq!(
        c.completed(capture, Duration::from_secs(10)),
        Eca::Normal.code()
    );
    assert_eq!(
        c.text("HDF1:FullFileName_RBV"),
        format!("{root}/run_008.h5")
    );
    assert_eq!(frames_in(&format!("{root}/run_008.h5")), vec![6, 32, 64]);
    assert_eq!(
        std::fs::metadata(&expected).unwrap().modified().unwrap(),
        before
    );
}

#[test]
fn dropped_arrays_count_every_frame_lost() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let config = dir.path().join("lossy.toml");
    std::fs::write(
        &config,
        "[detector]\nseed = 5\n[backend]\nfault_drop = 0.3\n",
    )
    .unwrap();
    let d = Daemon::start(
        dir.path(),
        &[
            "--data-root",
            root,
            "--size",
            "32x32",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let mut c = d.client();
    configure(&mut c, dir.path(), 40.0);
    c.put("HDF1:NumCapture", num(0.0)); // until Capture = 0
    let capture = c.put_nowait("HDF1:Capture", &num(1.0));
    c.put("cam1:Acquire", num(1.0));
    c.put("HDF1:Capture", num(0.0));
    assert_eq!(
        c.completed(capture, Duration::from_secs(10)),
        Eca::Normal.code()
    );
    let written = c.num("HDF1:NumCaptured_RBV");
    let dropped = c.num("HDF1:DroppedArrays_RBV");
    assert!(dropped > 0.0, "a 30% link loss over 40 frames lost nothing");
    assert_eq!(
        written + dropped,
        40.0,
        "written {written} + dropped {dropped}"
    );
    let file = c.text("HDF1:FullFileName_RBV");
    assert_eq!(frames_in(&file)[0] as f64, written);
}

#[test]
fn sigterm_during_a_capture_closes_the_file_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let mut d = Daemon::start(dir.path(), &["--data-root", root, "--size", "64x64"]);
    let mut c = d.client();
    configure(&mut c, dir.path(), 1.0);
    c.put("HDF1:NumCapture", num(0.0)); // until stopped
    c.put("cam1:ImageMode", num(2.0)); // Continuous
    c.put_nowait("HDF1:Capture", &num(1.0));
    while c.num("HDF1:Capture_RBV") != 1.0 {}
    let file = c.text("HDF1:FullFileName_RBV");
    c.put_nowait("cam1:Acquire", &num(1.0));
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.num("HDF1:NumCaptured_RBV") < 20.0 {
        assert!(
            Instant::now() < deadline,
            "no frames captured:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = d.terminate();
    assert!(status.success(), "exit {status}:\n{}", d.log());
    let frames = frames_in(&file)[0];
    assert!(frames >= 20, "{frames} frames in {file}");
    let log = d.log();
    assert!(log.contains("capture closed"), "{log}");
}

#[test]
fn an_acquire_right_after_a_run_starts_a_new_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let d = Daemon::start(dir.path(), &["--data-root", root, "--size", "32x32"]);
    let mut c = d.client();
    c.put("cam1:ImageMode", num(1.0));
    c.put("cam1:NumImages", num(1.0));
    c.put("cam1:WaitForPlugins", num(0.0));
    let start = c.num("cam1:ArrayCounter_RBV");
    // Each put-callback returns when Acquire falls, while the run may still be closing:
    // the next Acquire = 1 must still be a run of its own.
    for i in 1..=20 {
        c.put("cam1:Acquire", num(1.0));
        assert_eq!(
            c.num("cam1:ArrayCounter_RBV"),
            start + f64::from(i),
            "run {i}"
        );
    }
}

/// An Acquire = 1 that arrives while the last run is still writing its frames is queued: the
/// client is answered at once (its Channel Access thread does not wait for the old run), and
/// the new run starts when the old one has closed its file.
#[test]
fn an_acquire_while_a_run_closes_is_queued_and_the_client_answered_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    // A slow writer: one worker, deflate 9 of noise; the ring holds 16 of the 24 frames, so
    // the detector is done long before they are written.
    let config = dir.path().join("slow.toml");
    std::fs::write(&config, "[writer]\nworkers = 1\n[ring]\nslots = 16\n").unwrap();
    let d = Daemon::start(
        dir.path(),
        &[
            "--data-root",
            root,
            "--size",
            "256x256",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let mut c = d.client();
    configure(&mut c, dir.path(), 24.0);
    c.put("HDF1:NumCapture", num(0.0)); // until Capture = 0: both runs in one file
    c.put("HDF1:ZLevel", num(9.0));
    c.put("cam1:SimMode", num(3.0)); // noise
    c.put("cam1:AcquirePeriod", num(0.0));
    c.put("cam1:WaitForPlugins", num(0.0)); // Acquire's put is done when the detector stops
    let start = c.num("cam1:ArrayCounter_RBV");
    let capture = c.put_nowait("HDF1:Capture", &num(1.0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.num("HDF1:Capture_RBV") != 1.0 {
        assert!(Instant::now() < deadline, "Capture_RBV never rose");
    }
    c.put("cam1:Acquire", num(1.0));
    let second = c.put_nowait("cam1:Acquire", &num(1.0));
    // Answered while the first run still writes (up to 16 frames of deflate 9 to go).
    let captured = c.num("HDF1:NumCaptured_RBV");
    assert!(
        captured < 24.0,
        "the read was answered only after the first run had written all its frames"
    );
    assert_eq!(
        c.completed(second, Duration::from_secs(60)),
        Eca::Normal.code(),
        "{}",
        d.log()
    );
    assert_eq!(c.num("cam1:ArrayCounter_RBV"), start + 48.0, "two runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.num("HDF1:NumCaptured_RBV") < 48.0 {
        assert!(
            Instant::now() < deadline,
            "the frames never reached the file"
        );
    }
    c.put("HDF1:Capture", num(0.0));
    assert_eq!(
        c.completed(capture, Duration::from_secs(10)),
        Eca::Normal.code()
    );
    let file = c.text("HDF1:FullFileName_RBV");
    assert_eq!(frames_in(&file), vec![48, 256, 256]);
}

#[test]
fn image_previews_are_the_newest_frame_at_the_preview_rate() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    // Daemon::start serves previews at 2 a second.
    let d = Daemon::start(dir.path(), &["--data-root", root, "--size", "32x16"]);
    let mut c = d.client();
    let (sid, count) = c.channel("image1:ArrayData");
    assert_eq!(count, 32 * 16, "ArrayData holds a frame of the sensor");
    let mut monitor = d.client();
    let (msid, _) = monitor.channel("image1:ArrayData");
    monitor
        .probe
        .subscribe(msid, 1 /* DBR_SHORT */, 0, 77, 1)
        .unwrap();
    c.put("cam1:ImageMode", num(1.0));
    c.put("cam1:NumImages", num(300.0));
    c.put("cam1:AcquirePeriod", num(0.005));
    let started = Instant::now();
    c.put("cam1:Acquire", num(1.0));
    let took = started.elapsed().as_secs_f64();
    // Updates: the first (the value at subscription), then at most 2 a second.
    let mut updates = 0;
    let mut last = Vec::new();
    while let Ok((h, payload)) = monitor.probe.recv(Duration::from_millis(700)) {
        if h.command == cmd::EVENT_ADD && h.param2 == 77 {
            updates += 1;
            last = payload;
        }
    }
    assert!(took >= 1.4, "300 frames at 5 ms took {took} s");
    let allowed = 1 + (took * 2.0).ceil() as usize + 1;
    assert!(
        (2..=allowed).contains(&updates),
        "{updates} preview updates in {took:.2} s at 2 a second"
    );
    // The newest preview is a whole frame of the peaks picture, not zeros.
    let pixels: Vec<i16> = last[..32 * 16 * 2]
        .chunks_exact(2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .collect();
    assert!(pixels.iter().any(|&p| p != 0), "the preview is all zeros");
    let (_, read) = c.probe.read(sid, 1, 32 * 16, 99).unwrap();
    assert_eq!(
        &read[..32 * 16 * 2],
        &last[..32 * 16 * 2],
        "a read gives the newest preview"
    );
}

#[test]
fn a_capture_opened_during_a_run_with_another_codec_gets_its_frames_re_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let d = Daemon::start(dir.path(), &["--data-root", root, "--size", "64x64"]);
    let mut c = d.client();
    configure(&mut c, dir.path(), 5.0);
    // The run starts with no capture open and Compression None: its frames are raw.
    c.put("HDF1:Compression", num(0.0));
    c.put("cam1:ImageMode", num(2.0));
    c.put_nowait("cam1:Acquire", &num(1.0));
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.num("cam1:ArrayCounter_RBV") < 10.0 {
        assert!(Instant::now() < deadline, "no frames:\n{}", d.log());
    }
    // Now a zlib capture of 5 frames, opened mid-run.
    c.put("HDF1:Compression", num(3.0));
    c.put("HDF1:ZLevel", num(1.0));
    let capture = c.put_nowait("HDF1:Capture", &num(1.0));
    assert_eq!(
        c.completed(capture, Duration::from_secs(20)),
        Eca::Normal.code()
    );
    c.put("cam1:Acquire", num(0.0));
    let file = c.text("HDF1:FullFileName_RBV");
    let ds = hdf5::File::open(&file)
        .unwrap()
        .dataset("/entry/data/data")
        .unwrap();
    assert_eq!(ds.shape(), vec![5, 64, 64]);
    assert!(
        ds.filters()
            .iter()
            .any(|f| matches!(f, hdf5::filters::Filter::Deflate(_))),
        "{:?}",
        ds.filters()
    );
    let frames: Vec<u16> = ds.read_raw().unwrap();
    assert!(
        frames.iter().any(|&p| p != 0),
        "the frames read back as zeros"
    );
}

#[test]
fn single_mode_with_autosave_writes_each_frame_to_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let d = Daemon::start(dir.path(), &["--data-root", root, "--size", "32x24"]);
    let mut c = d.client();
    configure(&mut c, dir.path(), 3.0);
    c.put("HDF1:FileWriteMode", num(0.0));
    // AutoSave off (areaDetector's default): frames pass the plugin by.
    c.put("HDF1:AutoSave", num(0.0));
    c.put("cam1:Acquire", num(1.0));
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "h5")
            })
            .count(),
        0
    );
    // AutoSave on: one (H, W) file per frame, numbered on.
    c.put("HDF1:AutoSave", num(1.0));
    c.put("cam1:Acquire", num(1.0));
    for n in 7..10 {
        let file = format!("{root}/run_{n:03}.h5");
        assert_eq!(frames_in(&file), vec![24, 32], "{file}");
    }
    assert_eq!(c.num("HDF1:FileNumber_RBV"), 10.0);
    assert_eq!(
        c.text("HDF1:FullFileName_RBV"),
        format!("{root}/run_009.h5")
    );
    assert_eq!(c.num("HDF1:Capture_RBV"), 0.0);
}

#[test]
fn capture_mode_buffers_numcapture_frames_then_writes_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let d = Daemon::start(dir.path(), &["--data-root", root, "--size", "32x24"]);
    let mut c = d.client();
    configure(&mut c, dir.path(), 4.0);
    c.put("HDF1:FileWriteMode", num(1.0));
    let capture = c.put_nowait("HDF1:Capture", &num(1.0));
    c.put("cam1:Acquire", num(1.0));
    assert_eq!(
        c.completed(capture, Duration::from_secs(10)),
        Eca::Normal.code()
    );
    assert_eq!(c.num("HDF1:NumCaptured_RBV"), 4.0);
    let file = c.text("HDF1:FullFileName_RBV");
    assert_eq!(file, format!("{root}/run_007.h5"));
    assert_eq!(frames_in(&file), vec![4, 24, 32]);
}

/// Every setpoint that has a readback: a write the daemon accepts shows in the readback; one
/// it refuses says why, naming the PV.
#[test]
fn every_accepted_setpoint_shows_in_its_readback() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let d = Daemon::start(dir.path(), &["--data-root", root, "--size", "32x24"]);
    let mut c = d.client();
    let list = concat!(
        include_str!("../ioc/src/ophyd_pvs.txt"),
        include_str!("../ioc/src/ophyd_async_pvs.txt")
    );
    let mut setpoints: Vec<&str> = list
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split('\t').take(2))
        .filter(|s| s.contains(':') && !s.ends_with("_RBV") && !s.contains('.'))
        .collect();
    setpoints.sort_unstable();
    setpoints.dedup();
    // Actions, and FilePath (its readback is the resolved directory: tested above).
    let skip = [
        "cam1:Acquire",
        "HDF1:Capture",
        "HDF1:FlushNow",
        "HDF1:FilePath",
    ];
    let (mut accepted, mut refused) = (0, 0);
    for sp in setpoints.into_iter().filter(|s| !skip.contains(s)) {
        let rbv = format!("{sp}_RBV");
        let info = c.probe.create_channel(&format!("ad:{sp}"), 90_000).unwrap();
        let has_rbv = c.probe.create_channel(&format!("ad:{rbv}"), 90_001).is_ok();
        // Read-only without _RBV (ArraySize0, AcquireBusy, ...) or no readback: not setpoints.
        if !has_rbv || info.access & 2 == 0 {
            continue;
        }
        let is_text = info.native_type == DBR_STRING || info.native_type == DBR_CHAR;
        let value = if is_text {
            Put::Text("detflow-test".into())
        } else {
            let now = c.num(sp);
            Put::Num(if now == 1.0 { 0.0 } else { 1.0 })
        };
        let id = c.put_nowait(sp, &value);
        let status = c.completed(id, Duration::from_secs(10));
        if status == Eca::Normal.code() {
            accepted += 1;
            match value {
                Put::Num(v) => assert_eq!(c.num(&rbv), v, "{sp} = {v} accepted, {rbv} differs"),
                Put::Text(t) => assert_eq!(c.text(&rbv), t, "{sp} = {t:?} accepted"),
            }
        } else {
            refused += 1;
            let why = format!(
                "{} {}",
                c.text("cam1:StatusMessage_RBV"),
                c.text("HDF1:WriteMessage")
            );
            assert!(why.contains(sp), "{sp} refused without saying why: {why}");
        }
    }
    assert!(
        accepted > 150,
        "{accepted} setpoints accepted, {refused} refused"
    );
}

/// A refused put fails at the client as a failed put to an rsrv record does: ECA_PUTFAIL on
/// the put-callback (WRITE_NOTIFY), CA_PROTO_ERROR(ECA_PUTFAIL) carrying the request's
/// header for a plain WRITE. The PV keeps its value and goes into WRITE alarm (SEVR INVALID,
/// as asyn sets), seen by the client when its put returns, until a good value is written;
/// the message names the PV in StatusMessage / WriteMessage.
#[test]
fn a_refused_put_fails_at_the_client_and_raises_the_alarm_until_a_good_put() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let d = Daemon::start(dir.path(), &["--data-root", root, "--size", "64x48"]);
    let mut c = d.client();
    let cases = [
        ("HDF1:NumCapture", num(-5.0), num(5.0), "HDF1:WriteMessage"),
        ("cam1:SizeX", num(0.0), num(32.0), "cam1:StatusMessage_RBV"),
        (
            "HDF1:FileTemplate",
            text("%s%s_%n.h5"),
            text("%s%s_%4.4d.h5"),
            "HDF1:WriteMessage",
        ),
        ("HDF1:FileNumber", num(-1.0), num(3.0), "HDF1:WriteMessage"),
    ];
    for (pv, bad, good, message) in &cases {
        let before = c.text(pv);
        let id = c.put_nowait(pv, bad);
        assert_eq!(
            c.completed(id, Duration::from_secs(10)),
            Eca::PutFail.code(),
            "put-callback {pv} = {bad:?}"
        );
        // Posted before the reply, so already there when the put returns.
        assert_eq!(c.text(&format!("{pv}.SEVR")), "INVALID", "{pv} = {bad:?}");
        assert_eq!(c.text(&format!("{pv}.STAT")), "WRITE", "{pv} = {bad:?}");
        assert_eq!(c.text(pv), before, "{pv} = {bad:?} changed the value");
        let why = c.text(message);
        assert!(why.contains(pv), "{message} does not name {pv}: {why:?}");

        // A plain WRITE of the same value: CA_PROTO_ERROR with the request's header.
        let (sid, _) = c.channel(pv);
        let (ty, n, payload) = match bad {
            Put::Num(v) => (DBR_DOUBLE, 1, v.to_be_bytes().to_vec()),
            Put::Text(t) => {
                let mut b = t.as_bytes().to_vec();
                b.push(0);
                (DBR_CHAR, b.len() as u32, b)
            }
        };
        let request = Header::new(cmd::WRITE, ty, n, sid, 4242);
        c.probe.send(request, &payload).unwrap();
        let (h, body) = c
            .probe
            .recv_cmd(cmd::ERROR, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no CA_PROTO_ERROR for a plain WRITE {pv}: {e}"));
        assert_eq!(h.param2, Eca::PutFail.code(), "plain WRITE {pv} = {bad:?}");
        let mut sent = Vec::new();
        detflow_ca::proto::push_message(&mut sent, request, &payload);
        assert_eq!(
            body[..16],
            sent[..16],
            "the error carries the request's header"
        );
        assert_eq!(c.text(&format!("{pv}.SEVR")), "INVALID");

        // A good value clears the alarm.
        c.put(pv, good.clone());
        assert_eq!(c.text(&format!("{pv}.SEVR")), "NO_ALARM", "{pv} = {good:?}");
        assert_eq!(c.text(&format!("{pv}.STAT")), "NO_ALARM", "{pv} = {good:?}");
    }
}
