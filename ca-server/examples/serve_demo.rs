//! A demo IOC: a handful of PVs of every native type, setpoint/readback pairs, a put-notify
//! that completes when a simulated acquisition ends, long strings and a 1M-element u16 image.
//! The interop tests drive it with pyepics, caproto and ophyd.
//!
//! Usage: `serve_demo [--port N] [--prefix P] [--extra N]`. Port 0 (or none, without
//! `EPICS_CA_SERVER_PORT`) picks a free port. Prints `READY port=<port>` once serving, and
//! exits when standard input closes.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use detflow_ca::{Access, Alarm, Eca, NativeType, PvHandle, PvSpec, Server, Value, WriteReply};

/// Serve `spec` with a read-only `_RBV` twin that follows every accepted write.
fn with_rbv(server: &Server, spec: PvSpec) -> (PvHandle, PvHandle) {
    let mut rbv_spec = spec.clone();
    rbv_spec.name = format!("{}_RBV", spec.name);
    let rbv = server.add_pv(rbv_spec.read_only()).expect("readback PV");
    let set = server.add_pv(spec).expect("setpoint PV");
    let r = rbv.clone();
    set.on_write(move |req| {
        r.post(req.value().clone()).expect("same type");
        WriteReply::Accept
    });
    (set, rbv)
}

fn main() {
    let mut port: Option<u16> = None;
    let mut prefix = "DET:".to_owned();
    let mut extra = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()),
            "--prefix" => prefix = args.next().unwrap_or_default(),
            "--extra" => extra = args.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            other => {
                eprintln!("unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let mut builder = Server::builder();
    if let Some(p) = port {
        builder = builder.port(p);
    } else if std::env::var("EPICS_CAS_SERVER_PORT").is_err()
        && std::env::var("EPICS_CA_SERVER_PORT").is_err()
    {
        builder = builder.port(0);
    }
    let server = builder.build().expect("server starts");
    let p = |s: &str| format!("{prefix}{s}");

    let (acquire_time, _) = with_rbv(
        &server,
        PvSpec::double(&p("AcquireTime"), 0.1)
            .precision(3)
            .units("s")
            .display_limits(0.0, 10.0)
            .control_limits(0.0, 10.0),
    );
    with_rbv(
        &server,
        PvSpec::float(&p("Gain"), 1.5).precision(2).units("dB"),
    );
    with_rbv(
        &server,
        PvSpec::long(&p("NumImages"), 1).control_limits(1.0, 1_000_000.0),
    );
    with_rbv(&server, PvSpec::short(&p("BinX"), 1).units("px"));
    with_rbv(
        &server,
        PvSpec::enumeration(&p("ImageMode"), &["Single", "Multiple", "Continuous"], 0),
    );
    with_rbv(&server, PvSpec::string(&p("Label"), "detflow"));
    with_rbv(&server, PvSpec::char_string("HDF1:FilePath", 256, "/data/"));
    with_rbv(&server, PvSpec::char_string("HDF1:FileName", 256, "scan"));
    server
        .add_pv(PvSpec::string(&p("Model_RBV"), "detflow demo").read_only())
        .unwrap();
    let counter = server
        .add_pv(PvSpec::long(&p("ArrayCounter_RBV"), 0).read_only())
        .unwrap();
    let busy = server
        .add_pv(PvSpec::enumeration(&p("AcquireBusy"), &["Done", "Acquiring"], 0).read_only())
        .unwrap();
    let acquire_rbv = server
        .add_pv(PvSpec::enumeration(&p("Acquire_RBV"), &["Done", "Acquire"], 0).read_only())
        .unwrap();
    let acquire = server
        .add_pv(PvSpec::enumeration(&p("Acquire"), &["Done", "Acquire"], 0))
        .unwrap();
    server
        .add_pv(
            PvSpec::waveform(&p("Waveform"), NativeType::Double, 16).initial(vec![1.0, 2.5, -3.0]),
        )
        .unwrap();
    server
        .add_pv(PvSpec::waveform(&p("Bytes"), NativeType::Char, 8).initial(vec![0u8, 1, 2, 255]))
        .unwrap();
    server
        .add_pv(PvSpec::long(&p("Locked"), 7).access(Access::ReadOnly))
        .unwrap();
    // A write the daemon refuses when odd (and then in WRITE alarm until a write is
    // accepted, as `detflow serve` does); put-notify fails later for negative values.
    let checked = server.add_pv(PvSpec::long(&p("Even"), 0)).unwrap();
    checked.on_write(|req| {
        let v = req.value().get_f64(0).unwrap_or(0.0);
        if v < 0.0 {
            let c = req.completion();
            let c2 = c.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                c2.fail(Eca::PutFail);
            });
            return WriteReply::Pending(c);
        }
        if v as i64 % 2 != 0 {
            req.pv().set_alarm(Alarm::WRITE_FAILED);
            return WriteReply::Reject(Eca::PutFail);
        }
        req.pv().set_alarm(Alarm::NONE);
        WriteReply::Accept
    });
    // The image: 1024 × 1024 u16 ramp served as DBR_SHORT.
    let frame: Vec<u16> = (0..1_048_576u32).map(|i| (i % 65536) as u16).collect();
    let image = server
        .add_pv(
            PvSpec::waveform("image1:ArrayData", NativeType::Short, 1_048_576)
                .initial(Value::from(&frame[..])),
        )
        .unwrap();

    // Acquire=1 completes when the simulated acquisition ends (AcquireTime × NumImages).
    let running = Arc::new(AtomicBool::new(false));
    let num_images = server.pv(&p("NumImages")).unwrap();
    acquire.on_write(move |req| {
        let start = req.value().get_f64(0) == Some(1.0);
        acquire_rbv.post(req.value().clone()).ok();
        if !start {
            running.store(false, Ordering::SeqCst);
            return WriteReply::Accept;
        }
        if running.swap(true, Ordering::SeqCst) {
            return WriteReply::Accept;
        }
        let completion = req.completion();
        let done = completion.clone();
        let (t, n) = (
            acquire_time.value().get_f64(0).unwrap_or(0.1),
            num_images.value().get_f64(0).unwrap_or(1.0) as i32,
        );
        let (running, counter, busy, image, acq, acq_rbv) = (
            running.clone(),
            counter.clone(),
            busy.clone(),
            image.clone(),
            req.pv().clone(),
            acquire_rbv.clone(),
        );
        busy.post(Value::enum_index(1)).ok();
        std::thread::spawn(move || {
            for i in 0..n {
                if !running.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_secs_f64(t));
                let frame: Vec<u16> = (0..1_048_576u32).map(|p| (p as i32 + i) as u16).collect();
                image.post(Value::from(&frame[..])).ok();
                let c = counter.value().get_f64(0).unwrap_or(0.0) as i32;
                counter.post(c + 1).ok();
            }
            running.store(false, Ordering::SeqCst);
            acq.post(Value::enum_index(0)).ok();
            acq_rbv.post(Value::enum_index(0)).ok();
            busy.post(Value::enum_index(0)).ok();
            done.complete();
        });
        WriteReply::Pending(completion)
    });

    for i in 0..extra {
        server
            .add_pv(PvSpec::double(&p(&format!("Extra{i}")), i as f64).precision(2))
            .unwrap();
    }

    println!("READY port={}", server.port());
    std::io::stdout().flush().ok();
    // Serve until standard input closes.
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        if line.is_err() {
            break;
        }
    }
    server.shutdown();
}
