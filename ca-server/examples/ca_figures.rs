//! Measures the figures of the CA server on loopback:
//!
//! 1. caget round trip: READ_NOTIFY of DBR_TIME_DOUBLE on an open channel, and a whole
//!    "connect, create channel, read, close" as the `caget` tool does it (minus the search);
//! 2. monitor updates/s delivered to one client for a scalar and for a 1M-element waveform,
//!    with a poster posting as fast as it can;
//! 3. the server's memory with 100 clients each monitoring 50 PVs (server in a child process,
//!    posting every PV at 10 Hz; RSS from /proc).
//!
//! Run: `cargo run --release -p detflow-ca --example ca_figures` (add `-- --quick` for a
//! short run). Everything stays on 127.0.0.1 with ephemeral ports.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use detflow_ca::probe::Probe;
use detflow_ca::proto::{Header, cmd};
use detflow_ca::{NativeType, PvSpec, Server, Value};

const T: Duration = Duration::from_secs(10);

fn server() -> Server {
    Server::builder()
        .ignore_env()
        .interface(Ipv4Addr::LOCALHOST)
        .port(0)
        .beacon_addr(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9))
        .build()
        .expect("server starts")
}

fn addr(s: &Server) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, s.port()))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p) as usize]
}

fn round_trip(quick: bool) {
    let s = server();
    s.add_pv(
        PvSpec::double("FIG:AcquireTime", 0.1)
            .precision(3)
            .units("s"),
    )
    .unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    let ch = p.create_channel("FIG:AcquireTime", 1).unwrap();
    let n = if quick { 500 } else { 5000 };
    for i in 0..100 {
        p.read(ch.sid, 20, 0, i).unwrap();
    }
    let mut us = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        p.read(ch.sid, 20, 0, i as u32).unwrap();
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "caget round trip (READ_NOTIFY TIME_DOUBLE, open channel, {n} reads): median {:.1} us, p99 {:.1} us",
        percentile(&mut us, 0.5),
        percentile(&mut us, 0.99)
    );
    let n = if quick { 50 } else { 300 };
    let mut us = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let mut c = Probe::connect(addr(&s)).unwrap();
        let ch = c.create_channel("FIG:AcquireTime", 1).unwrap();
        c.read(ch.sid, 20, 0, i as u32).unwrap();
        c.send(Header::new(cmd::CLEAR_CHANNEL, 0, 0, ch.sid, 1), &[])
            .unwrap();
        c.recv_cmd(cmd::CLEAR_CHANNEL, T).unwrap();
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "caget-like session (TCP connect, VERSION/names, CREATE_CHAN, READ_NOTIFY, CLEAR_CHANNEL; {n} runs): median {:.1} us, p99 {:.1} us",
        percentile(&mut us, 0.5),
        percentile(&mut us, 0.99)
    );
}

/// Post `make(i)` as fast as possible for `secs` while one client counts updates.
fn monitor_rate(
    label: &str,
    spec: PvSpec,
    data_type: u16,
    secs: f64,
    make: impl Fn(u64) -> Value + Send + 'static,
) {
    let s = server();
    let pv = s.add_pv(spec).unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    let ch = p.create_channel(pv.name(), 1).unwrap();
    p.subscribe(ch.sid, data_type, 0, 7, 1).unwrap();
    p.recv(T).unwrap(); // the first update
    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicU64::new(0));
    let (stop2, posted2, pv2) = (stop.clone(), posted.clone(), pv.clone());
    let poster = std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            pv2.post(make(i)).unwrap();
            i += 1;
            posted2.store(i, Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    let mut updates = 0u64;
    let mut bytes = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let (h, payload) = p.recv(T).unwrap();
        assert_eq!(h.command, cmd::EVENT_ADD);
        updates += 1;
        bytes += payload.len() as u64 + 16;
    }
    let dt = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    poster.join().unwrap();
    let posts = posted.load(Ordering::Relaxed);
    println!(
        "monitor {label}: {:.0} updates/s delivered ({:.1} MB/s), {:.0} posts/s by the poster (coalesced to the latest)",
        updates as f64 / dt,
        bytes as f64 / dt / 1e6,
        posts as f64 / dt
    );
}

fn rss_kib(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("Threads:"))
}

/// Child mode: serve 50 PVs, post each at 10 Hz, until stdin closes.
fn serve_child() {
    let s = server();
    let pvs: Vec<_> = (0..50)
        .map(|i| {
            s.add_pv(PvSpec::double(&format!("MEM:PV{i}"), 0.0).precision(3))
                .unwrap()
        })
        .collect();
    println!("READY port={}", s.port());
    std::io::stdout().flush().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let poster = std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            for pv in &pvs {
                pv.post(i as f64).unwrap();
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
        line.clear();
    }
    stop.store(true, Ordering::Relaxed);
    poster.join().unwrap();
}

fn memory(quick: bool) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .arg("--serve-child")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .trim_start_matches("READY port=")
        .parse()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(300));
    let (idle, _, idle_threads) = rss_kib(pid);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (nclients, npvs) = (100, 50);
    let mut clients = Vec::new();
    for _ in 0..nclients {
        let mut c = Probe::connect(addr).unwrap();
        // All channels first: once monitors run, updates interleave with other replies.
        let sids: Vec<u32> = (0..npvs)
            .map(|i| c.create_channel(&format!("MEM:PV{i}"), i).unwrap().sid)
            .collect();
        for (i, sid) in sids.into_iter().enumerate() {
            c.subscribe(sid, 20, 0, i as u32, 5).unwrap();
        }
        clients.push(c);
    }
    // Keep every client reading for a while: each gets 50 PVs × 10 Hz.
    let secs = if quick { 2.0 } else { 5.0 };
    let start = Instant::now();
    let mut updates = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for c in &mut clients {
            while let Ok((h, _)) = c.recv(Duration::from_millis(1)) {
                if h.command == cmd::EVENT_ADD {
                    updates += 1;
                }
            }
        }
    }
    let (busy, hwm, threads) = rss_kib(pid);
    println!(
        "memory: server RSS {:.1} MiB idle ({idle_threads} threads) -> {:.1} MiB with {nclients} clients x {npvs} monitors \
         ({threads} threads, peak {:.1} MiB); {:.0} updates/s delivered to the clients",
        idle as f64 / 1024.0,
        busy as f64 / 1024.0,
        hwm as f64 / 1024.0,
        updates as f64 / start.elapsed().as_secs_f64()
    );
    drop(clients);
    drop(child.stdin.take());
    let _ = child.wait();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--serve-child") {
        return serve_child();
    }
    let quick = args.iter().any(|a| a == "--quick");
    let secs = if quick { 1.0 } else { 3.0 };
    round_trip(quick);
    monitor_rate(
        "scalar DOUBLE (TIME_DOUBLE)",
        PvSpec::double("FIG:Scalar", 0.0),
        20,
        secs,
        |i| Value::from(i as f64),
    );
    let frames: Vec<Value> = (0..4u16)
        .map(|k| {
            Value::from(
                &(0..1_048_576u32)
                    .map(|p| (p as u16).wrapping_add(k))
                    .collect::<Vec<u16>>()[..],
            )
        })
        .collect();
    monitor_rate(
        "1M-element u16 waveform (DBR_SHORT, 2 MiB/update)",
        PvSpec::waveform("FIG:Image", NativeType::Short, 1_048_576),
        1,
        secs,
        move |i| frames[(i % 4) as usize].clone(),
    );
    memory(quick);
}
