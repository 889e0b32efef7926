//! The server on real loopback sockets, checked message by message against the worked
//! examples of specs/channel-access.md, plus the robustness rules (malformed input closes
//! only the offending circuit; slow clients never block posters).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use detflow_ca::probe::{self, Probe};
use detflow_ca::proto::{Header, cmd};
use detflow_ca::{
    Access, Alarm, Completion, Eca, EpicsTime, NativeType, PvSpec, Server, Severity, Value,
    WriteReply,
};

const T: Duration = Duration::from_secs(5);

fn hex(dump: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in dump.lines() {
        let body = line.split_once(':').map_or(line, |(_, r)| r);
        for group in body.split_whitespace() {
            if !group.chars().all(|c| c.is_ascii_hexdigit()) {
                break;
            }
            for i in (0..group.len()).step_by(2) {
                out.push(u8::from_str_radix(&group[i..i + 2], 16).unwrap());
            }
        }
    }
    out
}

/// A server on 127.0.0.1 with an ephemeral port, beacons to a socket nobody reads.
fn server() -> Server {
    Server::builder()
        .ignore_env()
        .interface(Ipv4Addr::LOCALHOST)
        .port(0)
        .beacon_addr(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9))
        .quiet()
        .build()
        .expect("server starts")
}

fn addr(s: &Server) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, s.port()))
}

fn acquire_time(s: &Server) -> detflow_ca::PvHandle {
    s.add_pv(
        PvSpec::double("DET:AcquireTime", 0.1)
            .precision(3)
            .units("s")
            .display_limits(0.0, 10.0)
            .control_limits(0.0, 10.0),
    )
    .unwrap()
}

const STAMP: EpicsTime = EpicsTime {
    secs: 1_037_000_000,
    nanos: 500_000_000,
};

/// Header + payload bytes as received.
fn bytes(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut v = h.to_bytes();
    v.extend_from_slice(payload);
    v
}

/// Send ECHO and return every message that arrives before its reply.
fn drain_until_echo(p: &mut Probe) -> Vec<Header> {
    p.send(Header::new(cmd::ECHO, 0, 0, 0, 0), &[]).unwrap();
    let mut seen = Vec::new();
    loop {
        let (h, _) = p.recv(T).expect("echo reply");
        if h.command == cmd::ECHO {
            return seen;
        }
        seen.push(h);
    }
}

#[test]
fn search_answers_only_served_names() {
    let s = server();
    acquire_time(&s);
    let reply = probe::search(addr(&s), "DET:AcquireTime", 1, T)
        .unwrap()
        .expect("a reply");
    let mut want = hex("0000: 00000000 0001000d 00000001 00000000\n\
                        0010: 00060008 13c80000 ffffffff 00000001\n\
                        0020: 000d0000 00000000");
    want[20..22].copy_from_slice(&s.port().to_be_bytes());
    assert_eq!(reply, want);
    for name in [
        "DET:AcquireTime.VAL",
        "DET:AcquireTime.DISA",
        "DET:AcquireTime.EGU",
    ] {
        assert!(
            probe::search(addr(&s), name, 2, T).unwrap().is_some(),
            "{name}"
        );
    }
    for name in ["DET:Nope", "DET:AcquireTime.BOGUS", "X"] {
        let r = probe::search(addr(&s), name, 3, Duration::from_millis(300)).unwrap();
        assert_eq!(r, None, "{name} must get no UDP answer");
    }
}

#[test]
fn beacons_reach_the_configured_address() {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(T)).unwrap();
    let SocketAddr::V4(sink_addr) = sink.local_addr().unwrap() else {
        panic!("v4")
    };
    let s = Server::builder()
        .ignore_env()
        .port(0)
        .beacon_addr(sink_addr)
        .beacon_period(Duration::from_millis(200))
        .quiet()
        .build()
        .unwrap();
    assert_eq!(
        s.config().interfaces,
        vec![Ipv4Addr::LOCALHOST],
        "default interface"
    );
    let mut buf = [0u8; 64];
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (n, from) = sink.recv_from(&mut buf).expect("a beacon");
        assert_eq!(n, 16);
        assert_eq!(from.ip(), Ipv4Addr::LOCALHOST);
        let h = Header::new(
            cmd::RSRV_IS_UP,
            13,
            u32::from(s.port()),
            u32::from_be_bytes(buf[8..12].try_into().unwrap()),
            0,
        );
        assert_eq!(&buf[..16], &h.to_bytes()[..]);
        ids.push(h.param1);
    }
    assert_eq!(ids, vec![0, 1, 2]);
}

#[test]
fn create_and_read_match_the_spec_examples() {
    let s = server();
    let pv = acquire_time(&s);
    pv.post_with(0.1, None, Some(STAMP)).unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    // CREATE_CHAN: ACCESS_RIGHTS first, then the reply (spec §3.3).
    p.send(
        Header::new(cmd::CREATE_CHAN, 0, 0, 1, 13),
        b"DET:AcquireTime\0",
    )
    .unwrap();
    let (rights, _) = p.recv(T).unwrap();
    assert_eq!(
        rights.to_bytes(),
        hex("00160000 00000000 00000001 00000003")
    );
    let (reply, _) = p.recv(T).unwrap();
    assert_eq!(reply.command, cmd::CREATE_CHAN);
    assert_eq!((reply.data_type, reply.count, reply.param1), (6, 1, 1));
    let sid = reply.param2;
    // TIME_DOUBLE, count 0 (spec §3.4).
    let (h, payload) = p.read(sid, 20, 0, 42).unwrap();
    assert_eq!(
        bytes(&h, &payload),
        hex("0000: 000f0018 00140001 00000001 0000002a\n\
             0010: 00000000 3dcf5d40 1dcd6500 00000000\n\
             0020: 3fb99999 9999999a")
    );
    // CTRL_DOUBLE.
    let (h, payload) = p.read(sid, 34, 1, 43).unwrap();
    assert_eq!(
        bytes(&h, &payload),
        hex("0000: 000f0058 00220001 00000001 0000002b\n\
             0010: 00000000 00030000 73000000 00000000\n\
             0020: 40240000 00000000 00000000 00000000\n\
             0030: 00000000 00000000 00000000 00000000\n\
             0040: 00000000 00000000 00000000 00000000\n\
             0050: 40240000 00000000 00000000 00000000\n\
             0060: 3fb99999 9999999a")
    );
    // DBR_STRING of the double: "0.100".
    let (h, payload) = p.read(sid, 0, 1, 45).unwrap();
    assert_eq!(h.to_bytes(), hex("000f0028 00000001 00000001 0000002d"));
    assert_eq!(&payload[..6], b"0.100\0");
    assert!(payload[6..].iter().all(|&b| b == 0));
    // An unknown DBR type: ECA_BADTYPE in param1.
    let (h, _) = p.read(sid, 77, 1, 46).unwrap();
    assert_eq!((h.param1, h.param2), (Eca::BadType.code(), 46));
    // Unknown name.
    p.send(
        Header::new(cmd::CREATE_CHAN, 0, 0, 5, 13),
        b"DET:Missing\0\0\0\0\0",
    )
    .unwrap();
    let (fail, _) = p.recv(T).unwrap();
    assert_eq!(fail.to_bytes(), hex("001a0000 00000000 00000005 00000000"));
}

#[test]
fn writes_errors_and_access() {
    let s = server();
    let pv = acquire_time(&s);
    s.add_pv(PvSpec::long("DET:Locked", 3).access(Access::ReadOnly))
        .unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    let ch = p.create_channel("DET:AcquireTime", 1).unwrap();
    // WRITE 0.5 (spec §3.5): no reply, value stored.
    p.send(
        Header::new(cmd::WRITE, 6, 1, ch.sid, 0x2f),
        &0.5f64.to_be_bytes(),
    )
    .unwrap();
    assert!(
        drain_until_echo(&mut p).is_empty(),
        "a successful WRITE has no reply"
    );
    assert_eq!(pv.value(), Value::from(0.5));
    // Outside the control limits: ERROR(ECA_PUTFAIL) with the request header (spec §3.12).
    p.send(
        Header::new(cmd::WRITE, 6, 1, ch.sid, 0x2f),
        &11.0f64.to_be_bytes(),
    )
    .unwrap();
    let (h, payload) = p.recv(T).unwrap();
    let mut want = hex("0000: 000b0020 00000000 00000001 000000a0\n\
                        0010: 00040008 00060001 00000007 0000002f\n\
                        0020: 4445543a 41637175 69726554 696d6500");
    want[24..28].copy_from_slice(&ch.sid.to_be_bytes());
    assert_eq!(bytes(&h, &payload), want);
    assert_eq!(
        pv.value(),
        Value::from(0.5),
        "a failed write changes nothing"
    );
    // Read-only PV: access bits 1 and ECA_NOWTACCESS.
    let locked = p.create_channel("DET:Locked", 2).unwrap();
    assert_eq!(locked.access, 1);
    p.send(
        Header::new(cmd::WRITE, 5, 1, locked.sid, 2),
        &9i32.to_be_bytes(),
    )
    .unwrap();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!(
        (h.command, h.param1, h.param2),
        (cmd::ERROR, 2, Eca::NoWtAccess.code())
    );
    // Write as DBR_STRING (what caput sends).
    let mut text = b"2.25".to_vec();
    text.resize(40, 0);
    p.send(Header::new(cmd::WRITE, 0, 1, ch.sid, 1), &text)
        .unwrap();
    assert!(drain_until_echo(&mut p).is_empty());
    assert_eq!(pv.value(), Value::from(2.25));
    // Access change is announced.
    pv.set_access(Access::ReadOnly);
    let (h, _) = p.recv(T).unwrap();
    assert_eq!((h.command, h.param1, h.param2), (cmd::ACCESS_RIGHTS, 1, 1));
    // Unknown sid: ERROR(ECA_BADCHID), the circuit stays.
    p.send(Header::new(cmd::READ_NOTIFY, 6, 1, 0xdead, 1), &[])
        .unwrap();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!((h.command, h.param2), (cmd::ERROR, Eca::BadChid.code()));
    assert!(drain_until_echo(&mut p).is_empty());
}

#[test]
fn write_notify_completes_later_exactly_once() {
    let s = server();
    let pv = acquire_time(&s);
    let held: Arc<Mutex<Vec<Completion>>> = Arc::default();
    let h2 = held.clone();
    pv.on_write(move |req| {
        let v = req.value().get_f64(0).unwrap();
        if v == 7.0 {
            return WriteReply::Reject(Eca::PutFail);
        }
        let c = req.completion();
        h2.lock().unwrap().push(c.clone());
        WriteReply::Pending(c)
    });
    let mut p = Probe::connect(addr(&s)).unwrap();
    let ch = p.create_channel("DET:AcquireTime", 1).unwrap();
    p.send(
        Header::new(cmd::WRITE_NOTIFY, 6, 1, ch.sid, 0x30),
        &0.5f64.to_be_bytes(),
    )
    .unwrap();
    assert!(
        drain_until_echo(&mut p).is_empty(),
        "no reply before completion"
    );
    assert_eq!(
        pv.value(),
        Value::from(0.5),
        "a pending write is stored at once"
    );
    let c = held.lock().unwrap().pop().unwrap();
    assert!(c.is_pending());
    std::thread::spawn(move || c.complete()).join().unwrap();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!(h.to_bytes(), hex("00130000 00060001 00000001 00000030"));
    // fail() gives the status.
    p.send(
        Header::new(cmd::WRITE_NOTIFY, 6, 1, ch.sid, 0x31),
        &1.0f64.to_be_bytes(),
    )
    .unwrap();
    drain_until_echo(&mut p);
    held.lock().unwrap().pop().unwrap().fail(Eca::PutFail);
    let (h, _) = p.recv(T).unwrap();
    assert_eq!(h.to_bytes(), hex("00130000 00060001 000000a0 00000031"));
    // Dropped unfinished: ECA_PUTFAIL, once.
    p.send(
        Header::new(cmd::WRITE_NOTIFY, 6, 1, ch.sid, 0x32),
        &2.0f64.to_be_bytes(),
    )
    .unwrap();
    drain_until_echo(&mut p);
    let c = held.lock().unwrap().pop().unwrap();
    let c2 = c.clone();
    drop(c);
    assert!(
        drain_until_echo(&mut p).is_empty(),
        "a clone still holds it"
    );
    drop(c2);
    let (h, _) = p.recv(T).unwrap();
    assert_eq!(
        (h.command, h.param1, h.param2),
        (cmd::WRITE_NOTIFY, 160, 0x32)
    );
    // Rejected at once.
    p.send(
        Header::new(cmd::WRITE_NOTIFY, 6, 1, ch.sid, 0x33),
        &7.0f64.to_be_bytes(),
    )
    .unwrap();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!(
        (h.command, h.param1, h.param2),
        (cmd::WRITE_NOTIFY, 160, 0x33)
    );
    // Channel cleared while pending: dropped silently.
    p.send(
        Header::new(cmd::WRITE_NOTIFY, 6, 1, ch.sid, 0x34),
        &3.0f64.to_be_bytes(),
    )
    .unwrap();
    drain_until_echo(&mut p);
    p.send(Header::new(cmd::CLEAR_CHANNEL, 0, 0, ch.sid, 1), &[])
        .unwrap();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!(
        h.to_bytes(),
        Header::new(cmd::CLEAR_CHANNEL, 0, 0, ch.sid, 1).to_bytes()
    );
    held.lock().unwrap().pop().unwrap().complete();
    assert!(
        drain_until_echo(&mut p).is_empty(),
        "no reply for a cleared channel"
    );
}

#[test]
fn monitors_first_update_changes_and_cancel() {
    let s = server();
    let pv = acquire_time(&s);
    pv.post_with(0.1, None, Some(STAMP)).unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    let ch = p.create_channel("DET:AcquireTime", 1).unwrap();
    p.subscribe(ch.sid, 20, 0, 9, 5).unwrap();
    let (h, payload) = p.recv(T).unwrap();
    assert_eq!(
        bytes(&h, &payload),
        hex("0000: 00010018 00140001 00000001 00000009\n\
             0010: 00000000 3dcf5d40 1dcd6500 00000000\n\
             0020: 3fb99999 9999999a")
    );
    pv.post(0.25).unwrap();
    let (h, payload) = p.recv(T).unwrap();
    assert_eq!((h.command, h.param2), (cmd::EVENT_ADD, 9));
    assert_eq!(&payload[16..24], &0.25f64.to_be_bytes());
    // An alarm-only change reaches a VALUE|ALARM subscriber.
    pv.set_alarm(Alarm {
        status: 3,
        severity: Severity::Major,
    });
    let (_, payload) = p.recv(T).unwrap();
    assert_eq!(&payload[..4], &[0, 3, 0, 2]);
    // A metadata change does not (mask 5 has no DBE_PROPERTY).
    pv.update_metadata(|m| m.units = "ms".into());
    assert!(drain_until_echo(&mut p).is_empty());
    // EVENT_CANCEL: EVENT_ADD-coded empty reply, then silence.
    p.send(Header::new(cmd::EVENT_CANCEL, 20, 0, ch.sid, 9), &[])
        .unwrap();
    let (h, payload) = p.recv(T).unwrap();
    let mut want = hex("00010000 00140000 00000007 00000009");
    want[8..12].copy_from_slice(&ch.sid.to_be_bytes());
    assert_eq!(h.to_bytes(), want);
    assert!(payload.is_empty());
    pv.post(0.5).unwrap();
    assert!(drain_until_echo(&mut p).is_empty());
    p.send(Header::new(cmd::EVENT_CANCEL, 20, 0, ch.sid, 9), &[])
        .unwrap();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!((h.command, h.param2), (cmd::ERROR, Eca::BadMonId.code()));
    assert_eq!(pv.subscriber_count(), 0);
}

#[test]
fn echo_read_sync_and_split_messages() {
    let s = server();
    acquire_time(&s);
    let mut p = Probe::connect(addr(&s)).unwrap();
    let ch = p.create_channel("DET:AcquireTime", 1).unwrap();
    let echo = hex("00170000 00000000 00000000 00000000");
    p.send_raw(&echo).unwrap();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!(h.to_bytes(), echo);
    p.send(Header::new(cmd::READ_SYNC, 0, 0, 4, 5), &[])
        .unwrap();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!(
        h.to_bytes(),
        Header::new(cmd::READ_SYNC, 0, 0, 4, 5).to_bytes()
    );
    // A request split into single bytes is still one request.
    let req = Header::new(cmd::READ_NOTIFY, 6, 1, ch.sid, 77).to_bytes();
    for b in req {
        p.send_raw(&[b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let (h, payload) = p.recv(T).unwrap();
    assert_eq!((h.command, h.param2), (cmd::READ_NOTIFY, 77));
    assert_eq!(payload, 0.1f64.to_be_bytes());
    // EVENTS_OFF / EVENTS_ON carry no reply.
    p.send(Header::new(cmd::EVENTS_OFF, 0, 0, 0, 0), &[])
        .unwrap();
    p.send(Header::new(cmd::EVENTS_ON, 0, 0, 0, 0), &[])
        .unwrap();
    assert!(drain_until_echo(&mut p).is_empty());
}

#[test]
fn large_arrays_use_the_extended_header_and_count_zero_is_the_current_length() {
    let s = server();
    let frame: Vec<u16> = (0..1_048_576u32).map(|i| (i * 7) as u16).collect();
    let img = s
        .add_pv(
            PvSpec::waveform("image1:ArrayData", NativeType::Short, 1_048_576)
                .initial(Value::from(&frame[..])),
        )
        .unwrap();
    s.add_pv(PvSpec::waveform("W", NativeType::Double, 10).initial(vec![1.0, 2.0, 3.0]))
        .unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    let ch = p.create_channel("image1:ArrayData", 1).unwrap();
    assert_eq!((ch.native_type, ch.count), (1, 1_048_576));
    let (h, payload) = p.read(ch.sid, 1, 0, 0x32).unwrap();
    let mut want = Header::new(cmd::READ_NOTIFY, 1, 1_048_576, 1, 0x32);
    want.payload_size = 2_097_152;
    assert_eq!(h, want);
    assert_eq!(
        &h.to_bytes()[..],
        &hex("0000: 000fffff 00010000 00000001 00000032\n0010: 00200000 00100000")[..]
    );
    let got: Vec<u16> = payload
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(got, frame);
    // TIME_SHORT of 1M elements: 2,097,168 bytes.
    let (h, _) = p.read(ch.sid, 15, 0, 0x33).unwrap();
    assert_eq!(h.payload_size, 2_097_168);
    // A monitor update of a posted frame, and an empty array (NORD 0).
    p.subscribe(ch.sid, 1, 0, 3, 1).unwrap();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!((h.command, h.count), (cmd::EVENT_ADD, 1_048_576));
    img.post(Value::Short(Arc::from(&[][..]))).unwrap();
    let (h, payload) = p.recv(T).unwrap();
    assert_eq!((h.command, h.count, payload.len()), (cmd::EVENT_ADD, 0, 0));
    // Count 0 on a waveform: its current length; a bigger count: zero-filled.
    let w = p.create_channel("W", 2).unwrap();
    let (h, payload) = p.read(w.sid, 6, 0, 1).unwrap();
    assert_eq!((h.count, payload.len()), (3, 24));
    let (h, payload) = p.read(w.sid, 6, 5, 2).unwrap();
    assert_eq!((h.count, payload.len()), (5, 40));
    assert_eq!(&payload[24..], &[0u8; 16]);
    // A count above NELM is clamped.
    let (h, _) = p.read(w.sid, 6, 50, 3).unwrap();
    assert_eq!(h.count, 10);
}

#[test]
fn field_channels() {
    let s = server();
    let pv = acquire_time(&s);
    pv.set_alarm(Alarm {
        status: 4,
        severity: Severity::Minor,
    });
    let mut p = Probe::connect(addr(&s)).unwrap();
    let disa = p.create_channel("DET:AcquireTime.DISA", 1).unwrap();
    assert_eq!((disa.native_type, disa.count, disa.access), (1, 1, 1));
    let (_, payload) = p.read(disa.sid, 1, 1, 1).unwrap();
    assert_eq!(&payload[..2], &[0, 0]);
    let val = p.create_channel("DET:AcquireTime.VAL", 2).unwrap();
    assert_eq!((val.native_type, val.access), (6, 3));
    let egu = p.create_channel("DET:AcquireTime.EGU", 3).unwrap();
    let (_, payload) = p.read(egu.sid, 0, 1, 2).unwrap();
    assert_eq!(&payload[..2], b"s\0");
    let sevr = p.create_channel("DET:AcquireTime.SEVR", 4).unwrap();
    let (_, payload) = p.read(sevr.sid, 0, 1, 3).unwrap();
    assert_eq!(&payload[..6], b"MINOR\0");
    let prec = p.create_channel("DET:AcquireTime.PREC", 5).unwrap();
    let (_, payload) = p.read(prec.sid, 1, 1, 4).unwrap();
    assert_eq!(&payload[..2], &[0, 3]);
    let rtyp = p.create_channel("DET:AcquireTime.RTYP", 6).unwrap();
    let (_, payload) = p.read(rtyp.sid, 0, 1, 5).unwrap();
    assert_eq!(&payload[..3], b"ao\0");
    let hopr = p.create_channel("DET:AcquireTime.HOPR", 7).unwrap();
    let (_, payload) = p.read(hopr.sid, 6, 1, 6).unwrap();
    assert_eq!(&payload[..8], &10.0f64.to_be_bytes());
    // Fields are read-only.
    p.send(Header::new(cmd::WRITE, 1, 1, disa.sid, 1), &[0, 1])
        .unwrap();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!((h.command, h.param2), (cmd::ERROR, Eca::NoWtAccess.code()));
    assert!(p.create_channel("DET:AcquireTime.BOGUS", 8).is_err());
}

#[test]
fn malformed_input_closes_only_that_circuit() {
    let s = server();
    acquire_time(&s);
    let mut good = Probe::connect(addr(&s)).unwrap();
    let ch = good.create_channel("DET:AcquireTime", 1).unwrap();
    good.subscribe(ch.sid, 6, 1, 1, 1).unwrap();
    good.recv(T).unwrap();
    // Misaligned payload size.
    let mut bad = Probe::connect(addr(&s)).unwrap();
    bad.send_raw(&hex("00040007 00060001 00000001 0000002f 01020304 050607"))
        .unwrap();
    let end = bad.recv(T);
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof || e.kind() == std::io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
    // Unknown command: ERROR(ECA_INTERNAL), then closed.
    let mut bad = Probe::connect(addr(&s)).unwrap();
    bad.send(Header::new(99, 0, 0, 0, 0), &[]).unwrap();
    let (h, _) = bad.recv(T).unwrap();
    assert_eq!((h.command, h.param2), (cmd::ERROR, Eca::Internal.code()));
    assert!(bad.recv(T).is_err());
    // The other client is untouched.
    s.pv("DET:AcquireTime").unwrap().post(0.75).unwrap();
    let (h, payload) = good.recv(T).unwrap();
    assert_eq!(h.command, cmd::EVENT_ADD);
    assert_eq!(payload, 0.75f64.to_be_bytes());
    assert_eq!(s.subscription_count(), 1);
}

#[test]
fn oversized_request_is_refused_without_closing() {
    let s = Server::builder()
        .ignore_env()
        .port(0)
        .max_payload(1024)
        .quiet()
        .build()
        .unwrap();
    s.add_pv(PvSpec::waveform("W", NativeType::Char, 4096))
        .unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    let ch = p.create_channel("W", 1).unwrap();
    p.send(Header::new(cmd::WRITE, 4, 2048, ch.sid, 1), &[7u8; 2048])
        .unwrap();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!((h.command, h.param2), (cmd::ERROR, Eca::TooLarge.code()));
    assert!(drain_until_echo(&mut p).is_empty(), "circuit still serves");
    assert_eq!(s.pv("W").unwrap().value().len(), 0);
}

#[test]
fn slow_client_coalesces_and_never_blocks_the_poster() {
    let s = server();
    let pv = s
        .add_pv(PvSpec::waveform("FRAME", NativeType::Long, 65536))
        .unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    p.stream().set_nonblocking(false).unwrap();
    let ch = p.create_channel("FRAME", 1).unwrap();
    p.subscribe(ch.sid, 5, 0, 1, 1).unwrap();
    // The client reads nothing now: 2000 posts of 256 KiB each (500 MiB if queued).
    let (tx, rx) = mpsc::channel();
    let poster = pv.clone();
    std::thread::spawn(move || {
        for i in 0..2000i32 {
            poster.post(vec![i; 65536]).unwrap();
        }
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("posting finished while the client was stuck");
    // Now read: the latest value arrives, and far fewer updates than posts.
    let mut updates = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (h, payload) = p.recv(T).unwrap();
        assert_eq!(h.command, cmd::EVENT_ADD);
        updates += 1;
        if payload.is_empty() {
            continue; // the first update: the empty initial array
        }
        let first = i32::from_be_bytes(payload[..4].try_into().unwrap());
        if first == 1999 {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    assert!(updates < 2000, "{updates} updates: coalescing expected");
    assert!(
        drain_until_echo(&mut p).is_empty(),
        "nothing after the latest"
    );
}

#[test]
fn events_off_keeps_only_the_latest() {
    let s = server();
    let pv = s.add_pv(PvSpec::long("N", 0)).unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    let ch = p.create_channel("N", 1).unwrap();
    p.subscribe(ch.sid, 5, 1, 1, 1).unwrap();
    p.recv(T).unwrap();
    p.send(Header::new(cmd::EVENTS_OFF, 0, 0, 0, 0), &[])
        .unwrap();
    assert!(drain_until_echo(&mut p).is_empty());
    for i in 1..=100 {
        pv.post(i).unwrap();
    }
    assert!(drain_until_echo(&mut p).is_empty(), "no updates while off");
    p.send(Header::new(cmd::EVENTS_ON, 0, 0, 0, 0), &[])
        .unwrap();
    let (h, payload) = p.recv(T).unwrap();
    assert_eq!(h.command, cmd::EVENT_ADD);
    assert_eq!(payload[..4], 100i32.to_be_bytes());
    assert!(drain_until_echo(&mut p).is_empty(), "exactly one update");
}

#[test]
fn removed_pv_and_shutdown_send_server_disconn() {
    let s = server();
    acquire_time(&s);
    s.add_pv(PvSpec::long("B", 0)).unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    p.create_channel("DET:AcquireTime", 11).unwrap();
    p.create_channel("B", 12).unwrap();
    assert!(s.remove_pv("B"));
    let (h, _) = p.recv(T).unwrap();
    assert_eq!(h.to_bytes(), hex("001b0000 00000000 0000000c 00000000"));
    assert!(
        probe::search(addr(&s), "B", 1, Duration::from_millis(200))
            .unwrap()
            .is_none()
    );
    s.shutdown();
    let (h, _) = p.recv(T).unwrap();
    assert_eq!(h.to_bytes(), hex("001b0000 00000000 0000000b 00000000"));
    assert!(p.recv(T).is_err(), "then the circuit closes");
}

#[test]
fn many_clients_many_monitors() {
    let s = server();
    let pvs: Vec<_> = (0..10)
        .map(|i| s.add_pv(PvSpec::long(&format!("M{i}"), 0)).unwrap())
        .collect();
    let mut clients: Vec<Probe> = (0..20).map(|_| Probe::connect(addr(&s)).unwrap()).collect();
    for c in &mut clients {
        for i in 0..10u32 {
            let ch = c.create_channel(&format!("M{i}"), i).unwrap();
            c.subscribe(ch.sid, 19, 0, i, 5).unwrap();
            c.recv(T).unwrap();
        }
    }
    assert_eq!(s.subscription_count(), 200);
    assert_eq!(s.client_count(), 20);
    for (i, pv) in pvs.iter().enumerate() {
        pv.post(i as i32 + 100).unwrap();
    }
    for c in &mut clients {
        let mut seen = [false; 10];
        for _ in 0..10 {
            let (h, payload) = c.recv(T).unwrap();
            let v = i32::from_be_bytes(payload[12..16].try_into().unwrap());
            assert_eq!(v, h.param2 as i32 + 100);
            seen[h.param2 as usize] = true;
        }
        assert!(seen.iter().all(|&x| x));
    }
    drop(clients);
    let deadline = Instant::now() + T;
    while s.client_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.client_count(), 0, "closed circuits are reaped");
    assert_eq!(pvs[0].subscriber_count(), 0, "their monitors are gone");
}

#[test]
fn enum_writes_by_name_and_index() {
    let s = server();
    let pv = s
        .add_pv(PvSpec::enumeration(
            "MODE",
            &["Single", "Multiple", "Continuous"],
            0,
        ))
        .unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    let ch = p.create_channel("MODE", 1).unwrap();
    assert_eq!(ch.native_type, 3);
    let put = |p: &mut Probe, text: &str, ioid: u32| {
        let mut b = text.as_bytes().to_vec();
        b.resize(40, 0);
        p.send(Header::new(cmd::WRITE_NOTIFY, 0, 1, ch.sid, ioid), &b)
            .unwrap();
        p.recv(T).unwrap().0.param1
    };
    assert_eq!(put(&mut p, "Continuous", 1), 1);
    assert_eq!(pv.value(), Value::enum_index(2));
    assert_eq!(put(&mut p, "1", 2), 1);
    assert_eq!(pv.value(), Value::enum_index(1));
    assert_eq!(put(&mut p, "Bogus", 3), Eca::PutFail.code());
    assert_eq!(pv.value(), Value::enum_index(1));
    // TIME_STRING read (camonitor on an enum): the state name.
    let (_, payload) = p.read(ch.sid, 14, 0, 9).unwrap();
    assert_eq!(&payload[12..21], b"Multiple\0");
}

#[test]
fn a_burst_of_small_updates_is_queued_not_coalesced() {
    let s = server();
    let pv = s.add_pv(PvSpec::long("COUNTER", 0)).unwrap();
    let mut p = Probe::connect(addr(&s)).unwrap();
    let ch = p.create_channel("COUNTER", 1).unwrap();
    p.subscribe(ch.sid, 5, 1, 1, 1).unwrap();
    p.recv(T).unwrap();
    // Faster than any client reads: a counter that a camonitor must see whole.
    for i in 1..=40 {
        pv.post(i).unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 40 {
        let (h, payload) = p.recv(T).expect("an update");
        assert_eq!(h.command, cmd::EVENT_ADD);
        seen.push(i32::from_be_bytes(payload[..4].try_into().unwrap()));
    }
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
}

/// The order clients rely on (README, "Ordering"): the monitor update a put causes is sent
/// before the put's WRITE_NOTIFY reply and before the reply to the next request, whether the
/// put is accepted at once, echoed to a readback by the write callback, or completed later
/// from another thread. Repeated, since the old writer lost this race only some of the time.
#[test]
fn a_puts_monitor_update_comes_before_its_completion_and_later_replies() {
    const DBR_LONG: u16 = 5;
    const DBR_DOUBLE: u16 = 6;
    let s = server();
    s.add_pv(PvSpec::waveform("W", NativeType::Double, 16).initial(vec![1.0, 2.5, -3.0]))
        .unwrap();
    let set = s.add_pv(PvSpec::long("N", 0)).unwrap();
    let rbv = s.add_pv(PvSpec::long("N_RBV", 0).read_only()).unwrap();
    set.on_write(move |req| {
        rbv.post(req.value().clone()).unwrap();
        WriteReply::Accept
    });
    let later = s.add_pv(PvSpec::long("L", 0)).unwrap();
    let later_rbv = s.add_pv(PvSpec::long("L_RBV", 0).read_only()).unwrap();
    later.on_write(move |req| {
        let c = req.completion();
        let (done, rbv, v) = (c.clone(), later_rbv.clone(), req.value().clone());
        std::thread::spawn(move || {
            rbv.post(v).unwrap();
            done.complete();
        });
        WriteReply::Pending(c)
    });
    let mut p = Probe::connect(addr(&s)).unwrap();
    let w = p.create_channel("W", 1).unwrap();
    let n = p.create_channel("N", 2).unwrap();
    let n_rbv = p.create_channel("N_RBV", 3).unwrap();
    let l = p.create_channel("L", 4).unwrap();
    let l_rbv = p.create_channel("L_RBV", 5).unwrap();
    p.subscribe(w.sid, DBR_DOUBLE, 0, 10, 1).unwrap();
    p.subscribe(n_rbv.sid, DBR_LONG, 1, 11, 1).unwrap();
    p.subscribe(l.sid, DBR_LONG, 1, 12, 1).unwrap();
    p.subscribe(l_rbv.sid, DBR_LONG, 1, 13, 1).unwrap();
    for _ in 0..4 {
        let (h, _) = p.recv(T).expect("the first updates");
        assert_eq!(h.command, cmd::EVENT_ADD);
    }

    // Send `requests` in one segment; what arrives until `n` replies other than updates
    // came, as (command, param1, param2, payload).
    let exchange = |p: &mut Probe, requests: &[(Header, Vec<u8>)], n: usize| {
        let mut bytes = Vec::new();
        for (h, payload) in requests {
            detflow_ca::proto::push_message(&mut bytes, *h, payload);
        }
        p.send_raw(&bytes).unwrap();
        let mut seen = Vec::new();
        let mut replies = 0;
        while replies < n {
            let (h, payload) = p.recv(T).expect("replies");
            if h.command != cmd::EVENT_ADD {
                replies += 1;
            }
            seen.push((h.command, h.param1, h.param2, payload));
        }
        seen
    };
    let order = |seen: &[(u16, u32, u32, Vec<u8>)]| -> Vec<(u16, u32)> {
        seen.iter().map(|(c, _, id, _)| (*c, *id)).collect()
    };
    for i in 0..200u32 {
        // Accepted at once: a waveform shortened to 2 elements (pyepics then reads 2).
        let payload: Vec<u8> = [f64::from(i), 5.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let seen = exchange(
            &mut p,
            &[
                (
                    Header::new(cmd::WRITE_NOTIFY, DBR_DOUBLE, 2, w.sid, 1000 + i),
                    payload.clone(),
                ),
                (
                    Header::new(cmd::READ_NOTIFY, DBR_DOUBLE, 0, w.sid, 5000 + i),
                    Vec::new(),
                ),
            ],
            2,
        );
        assert_eq!(
            order(&seen),
            [
                (cmd::EVENT_ADD, 10),
                (cmd::WRITE_NOTIFY, 1000 + i),
                (cmd::READ_NOTIFY, 5000 + i)
            ],
            "put {i} on W"
        );
        assert_eq!(
            seen[0].3, payload,
            "the update carries the new value, NORD 2"
        );
        assert_eq!(seen[1].1, Eca::Normal.code());
        // Echoed to a readback by the write callback.
        let seen = exchange(
            &mut p,
            &[
                (
                    Header::new(cmd::WRITE_NOTIFY, DBR_LONG, 1, n.sid, 2000 + i),
                    i.to_be_bytes().to_vec(),
                ),
                (
                    Header::new(cmd::READ_NOTIFY, DBR_LONG, 1, n_rbv.sid, 6000 + i),
                    Vec::new(),
                ),
            ],
            2,
        );
        assert_eq!(
            order(&seen),
            [
                (cmd::EVENT_ADD, 11),
                (cmd::WRITE_NOTIFY, 2000 + i),
                (cmd::READ_NOTIFY, 6000 + i)
            ],
            "put {i} on N"
        );
        assert_eq!(seen[0].3[..4], i.to_be_bytes());
        // Completed from another thread after it posts a readback (the two updates may come
        // in either order, both before the completion).
        let value = 3 * i + 1;
        let mut seen = exchange(
            &mut p,
            &[(
                Header::new(cmd::WRITE_NOTIFY, DBR_LONG, 1, l.sid, 3000 + i),
                value.to_be_bytes().to_vec(),
            )],
            1,
        );
        let last = seen.pop().map(|(c, _, id, _)| (c, id));
        assert_eq!(last, Some((cmd::WRITE_NOTIFY, 3000 + i)), "put {i} on L");
        seen.sort_by_key(|(_, _, id, _)| *id);
        assert_eq!(
            order(&seen),
            [(cmd::EVENT_ADD, 12), (cmd::EVENT_ADD, 13)],
            "put {i} on L"
        );
        assert!(
            seen.iter()
                .all(|(_, _, _, v)| v[..4] == value.to_be_bytes())
        );
    }
}

/// A server on a port it chose (port 0) holds its UDP search port alone: a client socket
/// that sets SO_REUSEADDR (caproto's search sockets do) cannot be given the same port, which
/// would send that client's search replies to the server. A configured port is shared, as
/// rsrv shares 5064.
#[test]
fn an_ephemeral_search_port_is_not_shared() {
    use socket2::{Domain, Protocol, Socket, Type};
    let reuse_bind = |port: u16| {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
    };
    let s = server();
    assert!(
        reuse_bind(s.port()).is_err(),
        "a SO_REUSEADDR socket was bound to the server's search port {}",
        s.port()
    );
    // A configured port: the server binds it shared.
    let port = s.port();
    drop(s);
    let fixed = Server::builder()
        .ignore_env()
        .interface(Ipv4Addr::LOCALHOST)
        .port(port)
        .beacon_addr(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9))
        .quiet()
        .build()
        .expect("the port is free again");
    let other = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    other.set_reuse_address(true).unwrap();
    other.set_reuse_port(true).unwrap();
    other
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, fixed.port())).into())
        .expect("a second CA server shares a configured port");
}
