//! Property tests for the message decoder: arbitrary bytes never panic the framing or the
//! DBR decoders, headers round-trip, and a live server fed garbage (raw or well framed) on one
//! circuit keeps serving every other circuit.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use detflow_ca::dbr::{self, DbrRequest, PutTarget};
use detflow_ca::probe::Probe;
use detflow_ca::proto::{self, Header, Parsed, cmd};
use detflow_ca::{Alarm, EpicsTime, Metadata, NativeType, PvSpec, Server, Value};
use proptest::prelude::*;

fn native() -> impl Strategy<Value = NativeType> {
    (0u16..7).prop_map(|i| NativeType::from_id(i).unwrap())
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(".{0,50}", 0..4).prop_map(|v| Value::String(v.into())),
        prop::collection::vec(any::<i16>(), 0..8).prop_map(Value::from),
        prop::collection::vec(any::<f32>(), 0..8).prop_map(Value::from),
        prop::collection::vec(any::<u16>(), 0..8).prop_map(|v| Value::Enum(v.into())),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::from),
        prop::collection::vec(any::<i32>(), 0..8).prop_map(Value::from),
        prop::collection::vec(any::<f64>(), 0..8).prop_map(Value::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_header_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        match proto::parse_header(&bytes) {
            Ok(Parsed::Header { header, len }) => {
                prop_assert!(len == 16 || len == 24);
                prop_assert_eq!(header.payload_size % 8, 0);
            }
            Ok(Parsed::NeedMore) => prop_assert!(bytes.len() < 24),
            Err(_) => {}
        }
        let _ = proto::parse_udp_message(&bytes);
    }

    #[test]
    fn headers_round_trip(command in any::<u16>(), size in 0u32..(1 << 26), data_type in any::<u16>(),
                          count in any::<u32>(), p1 in any::<u32>(), p2 in any::<u32>()) {
        let h = Header { command, payload_size: size * 8, data_type, count, param1: p1, param2: p2 };
        let bytes = h.to_bytes();
        let parsed = proto::parse_header(&bytes).unwrap();
        prop_assert_eq!(parsed, Parsed::Header { header: h, len: bytes.len() });
        // Any prefix needs more.
        prop_assert_eq!(proto::parse_header(&bytes[..bytes.len() - 1]).unwrap(), Parsed::NeedMore);
    }

    #[test]
    fn decode_put_never_panics(ty in 0u16..45, count in prop_oneof![0u32..20, any::<u32>()],
                               payload in prop::collection::vec(any::<u8>(), 0..200),
                               native in native(), text in any::<bool>(), max in 1usize..64) {
        let meta = Metadata { enum_states: vec!["A".into(), "B".into()], control: (-5.0, 5.0), ..Metadata::default() };
        let text = text && native == NativeType::Char;
        let target = PutTarget { native, max_count: max, text, meta: &meta };
        if let Ok(dbr::PutValue::Value(v)) = dbr::decode_put(ty, count, &payload, &target) {
            prop_assert_eq!(v.native_type(), native);
            prop_assert!(v.len() <= max);
        }
    }

    #[test]
    fn encode_any_type_any_value(v in value(), ty in 0u16..39, n in 0usize..10) {
        let meta = Metadata { enum_states: vec!["Off".into(), "On".into()], precision: 4, ..Metadata::default() };
        let req = DbrRequest::from_id(ty).unwrap();
        let mut out = Vec::new();
        let src = dbr::Source { value: &v, alarm: Alarm::NONE, stamp: EpicsTime::now(), meta: &meta };
        match dbr::encode(&mut out, req, n, &src) {
            Ok(()) => prop_assert_eq!(Some(out.len()), req.payload_len(n)),
            Err(_) => prop_assert!(out.is_empty()),
        }
    }
}

/// One server for the live cases, with small PVs of every type.
fn live() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let s = Server::builder()
            .ignore_env()
            .interface(Ipv4Addr::LOCALHOST)
            .port(0)
            .beacon_addr(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9))
            .max_payload(1 << 20)
            .quiet()
            .build()
            .unwrap();
        s.add_pv(PvSpec::double("F:D", 1.5).precision(2)).unwrap();
        s.add_pv(PvSpec::enumeration("F:E", &["A", "B"], 1))
            .unwrap();
        s.add_pv(PvSpec::char_string("F:C", 64, "text")).unwrap();
        s.add_pv(PvSpec::string("F:S", "s")).unwrap();
        s.add_pv(PvSpec::waveform("F:W", NativeType::Short, 100).initial(vec![1i16; 100]))
            .unwrap();
        s
    })
}

fn addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, live().port()))
}

/// A well-behaved client still gets the right answer.
fn healthy() -> Result<(), TestCaseError> {
    let mut p = Probe::connect(addr()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let ch = p
        .create_channel("F:D", 1)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (h, payload) = p
        .read(ch.sid, 6, 1, 1)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(h.param1, 1);
    prop_assert_eq!(&payload[..], &1.5f64.to_be_bytes()[..]);
    Ok(())
}

/// Send `bytes` on a fresh circuit, then drain whatever comes back for a short while.
fn feed(bytes: &[u8]) {
    let mut s = TcpStream::connect(addr()).unwrap();
    let _ = s.write_all(bytes);
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = [0u8; 65536];
    let end = Instant::now() + Duration::from_millis(100);
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

/// A framed message with arbitrary fields: reaches every request handler.
fn framed() -> impl Strategy<Value = Vec<u8>> {
    let command = prop_oneof![0u16..28, any::<u16>()];
    (
        command,
        0u16..40,
        prop_oneof![0u32..4, any::<u32>()],
        0u32..8,
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
        .prop_map(|(command, data_type, count, sid, p2, payload, name)| {
            let mut out = Vec::new();
            if name {
                // Create a real channel first, so sids 1.. are often valid.
                proto::push_message(
                    &mut out,
                    Header::new(cmd::CREATE_CHAN, 0, 0, 1, 13),
                    b"F:W\0",
                );
            }
            proto::push_message(
                &mut out,
                Header::new(command, data_type, count, sid, p2),
                &payload,
            );
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn garbage_closes_only_its_own_circuit(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        feed(&bytes);
        healthy()?;
    }

    #[test]
    fn arbitrary_framed_requests_never_hurt_others(msgs in prop::collection::vec(framed(), 1..6)) {
        feed(&msgs.concat());
        healthy()?;
    }
}
