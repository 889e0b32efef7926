//! The Channel Access wire format: message headers (standard and extended), command ids,
//! ECA status codes and a framing decoder for TCP byte streams and UDP datagrams.
//!
//! Everything here is pure (no sockets), so the worked examples of the protocol spec can be
//! checked byte for byte in unit tests. All integers are big-endian.

use thiserror::Error;

/// Protocol minor version this server speaks (CA 4.13).
pub const MINOR_VERSION: u16 = 13;

/// Command ids (`m_cmmd`) of the messages this server reads or writes.
#[allow(missing_docs)]
pub mod cmd {
    pub const VERSION: u16 = 0;
    pub const EVENT_ADD: u16 = 1;
    pub const EVENT_CANCEL: u16 = 2;
    pub const READ: u16 = 3;
    pub const WRITE: u16 = 4;
    pub const SEARCH: u16 = 6;
    pub const EVENTS_OFF: u16 = 8;
    pub const EVENTS_ON: u16 = 9;
    pub const READ_SYNC: u16 = 10;
    pub const ERROR: u16 = 11;
    pub const CLEAR_CHANNEL: u16 = 12;
    pub const RSRV_IS_UP: u16 = 13;
    pub const NOT_FOUND: u16 = 14;
    pub const READ_NOTIFY: u16 = 15;
    pub const CREATE_CHAN: u16 = 18;
    pub const WRITE_NOTIFY: u16 = 19;
    pub const CLIENT_NAME: u16 = 20;
    pub const HOST_NAME: u16 = 21;
    pub const ACCESS_RIGHTS: u16 = 22;
    pub const ECHO: u16 = 23;
    pub const CREATE_CH_FAIL: u16 = 26;
    pub const SERVER_DISCONN: u16 = 27;
}

/// SEARCH reply flag: the client wants a NOT_FOUND for unknown names (TCP only).
pub const DO_REPLY: u16 = 10;

/// ECA status codes (`(message number << 3) | severity`, libca `caerr.h`).
///
/// The server puts them in param1 of read/event/put-notify replies and in param2 of ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Eca {
    /// Success.
    Normal = 1,
    /// Out of memory or subscriptions.
    AllocMem = 48,
    /// Request or reply bigger than the server's limit.
    TooLarge = 72,
    /// Bad or unsupported DBR type.
    BadType = 114,
    /// Protocol violation.
    Internal = 142,
    /// Read failed.
    GetFail = 152,
    /// Write rejected.
    PutFail = 160,
    /// Bad element count.
    BadCount = 176,
    /// Unknown subscription id.
    BadMonId = 242,
    /// A put-notify is already in progress.
    PutCbInProg = 362,
    /// Read access denied.
    NoRdAccess = 368,
    /// Write access denied.
    NoWtAccess = 376,
    /// No sensible conversion between the requested and native types.
    NoConvert = 400,
    /// Unknown channel (sid).
    BadChid = 410,
    /// The client is older than 4.9 and the reply needs an extended header.
    Array16kClient = 464,
}

impl Eca {
    /// The code as sent on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The libca name of the code, e.g. `"ECA_PUTFAIL"`.
    pub fn name(self) -> &'static str {
        match self {
            Eca::Normal => "ECA_NORMAL",
            Eca::AllocMem => "ECA_ALLOCMEM",
            Eca::TooLarge => "ECA_TOLARGE",
            Eca::BadType => "ECA_BADTYPE",
            Eca::Internal => "ECA_INTERNAL",
            Eca::GetFail => "ECA_GETFAIL",
            Eca::PutFail => "ECA_PUTFAIL",
            Eca::BadCount => "ECA_BADCOUNT",
            Eca::BadMonId => "ECA_BADMONID",
            Eca::PutCbInProg => "ECA_PUTCBINPROG",
            Eca::NoRdAccess => "ECA_NORDACCESS",
            Eca::NoWtAccess => "ECA_NOWTACCESS",
            Eca::NoConvert => "ECA_NOCONVERT",
            Eca::BadChid => "ECA_BADCHID",
            Eca::Array16kClient => "ECA_16KARRAYCLIENT",
        }
    }
}

impl std::fmt::Display for Eca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// A decoded message header. Extended headers are folded in: `payload_size` and `count`
/// are always the real values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Command id.
    pub command: u16,
    /// Payload bytes following the header (already padded to 8 by the sender).
    pub payload_size: u32,
    /// DBR type or a command-specific value.
    pub data_type: u16,
    /// Element count or a command-specific value.
    pub count: u32,
    /// First parameter (cid, sid, status, ...).
    pub param1: u32,
    /// Second parameter (ioid, subscription id, ...).
    pub param2: u32,
}

/// Round `n` up to the next multiple of 8 (`CA_MESSAGE_ALIGN`).
pub fn align8(n: usize) -> usize {
    (n + 7) & !7
}

impl Header {
    /// A header with the given command and parameters, no payload.
    pub fn new(command: u16, data_type: u16, count: u32, param1: u32, param2: u32) -> Self {
        Header {
            command,
            payload_size: 0,
            data_type,
            count,
            param1,
            param2,
        }
    }

    /// Whether this header needs the 24-byte extended form on the wire.
    pub fn is_large(&self) -> bool {
        self.payload_size >= 0xFFFF || self.count >= 0xFFFF
    }

    /// Bytes the header takes on the wire (16 or 24).
    pub fn wire_len(&self) -> usize {
        if self.is_large() { 24 } else { 16 }
    }

    /// Append the header to `out`, in extended form when needed.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.command.to_be_bytes());
        if self.is_large() {
            out.extend_from_slice(&0xFFFFu16.to_be_bytes());
            out.extend_from_slice(&self.data_type.to_be_bytes());
            out.extend_from_slice(&0u16.to_be_bytes());
            out.extend_from_slice(&self.param1.to_be_bytes());
            out.extend_from_slice(&self.param2.to_be_bytes());
            out.extend_from_slice(&self.payload_size.to_be_bytes());
            out.extend_from_slice(&self.count.to_be_bytes());
        } else {
            out.extend_from_slice(&(self.payload_size as u16).to_be_bytes());
            out.extend_from_slice(&self.data_type.to_be_bytes());
            out.extend_from_slice(&(self.count as u16).to_be_bytes());
            out.extend_from_slice(&self.param1.to_be_bytes());
            out.extend_from_slice(&self.param2.to_be_bytes());
        }
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24);
        self.write_to(&mut v);
        v
    }
}

/// Append a message with `payload`, zero-padded to 8, setting the header's payload size.
pub fn push_message(out: &mut Vec<u8>, mut header: Header, payload: &[u8]) {
    let padded = align8(payload.len());
    header.payload_size = padded as u32;
    header.write_to(out);
    out.extend_from_slice(payload);
    out.resize(out.len() + (padded - payload.len()), 0);
}

/// Append a message whose payload is a NUL-terminated string padded to 8.
pub fn push_string_message(out: &mut Vec<u8>, header: Header, text: &[u8]) {
    let mut payload = Vec::with_capacity(text.len() + 1);
    payload.extend_from_slice(text);
    payload.push(0);
    push_message(out, header, &payload);
}

/// Ways a byte stream can break the framing rules. Any of them closes the circuit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// `header + payload` is not a multiple of 8 (rsrv: "Missaligned protocol rejected").
    #[error(
        "misaligned message: command {command}, payload size {payload_size} is not a multiple of 8"
    )]
    Misaligned {
        /// Command id of the message.
        command: u16,
        /// Its payload size.
        payload_size: u32,
    },
}

/// What [`parse_header`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes for a whole header yet.
    NeedMore,
    /// A header of `len` bytes (16 or 24).
    Header {
        /// The decoded header.
        header: Header,
        /// Bytes the header took.
        len: usize,
    },
}

/// Decode the header at the start of `buf`, standard or extended (payload size 0xFFFF marks
/// an extended header, as in rsrv), and check the 8-byte alignment rule.
pub fn parse_header(buf: &[u8]) -> Result<Parsed, FrameError> {
    if buf.len() < 16 {
        return Ok(Parsed::NeedMore);
    }
    let u16at = |o: usize| u16::from_be_bytes([buf[o], buf[o + 1]]);
    let u32at = |o: usize| u32::from_be_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let command = u16at(0);
    let small_size = u16at(2);
    let mut header = Header {
        command,
        payload_size: u32::from(small_size),
        data_type: u16at(4),
        count: u32::from(u16at(6)),
        param1: u32at(8),
        param2: u32at(12),
    };
    let mut len = 16;
    if small_size == 0xFFFF {
        if buf.len() < 24 {
            return Ok(Parsed::NeedMore);
        }
        header.payload_size = u32at(16);
        header.count = u32at(20);
        len = 24;
    }
    if !header.payload_size.is_multiple_of(8) {
        return Err(FrameError::Misaligned {
            command,
            payload_size: header.payload_size,
        });
    }
    Ok(Parsed::Header { header, len })
}

/// Decode one message header from a UDP datagram, lenient about alignment (libca pads, but
/// other clients might not): returns the header, its length, and the payload slice bounds.
/// `None` when the datagram is truncated.
pub fn parse_udp_message(buf: &[u8]) -> Option<(Header, usize, usize)> {
    if buf.len() < 16 {
        return None;
    }
    let u16at = |o: usize| u16::from_be_bytes([buf[o], buf[o + 1]]);
    let u32at = |o: usize| u32::from_be_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let header = Header {
        command: u16at(0),
        payload_size: u32::from(u16at(2)),
        data_type: u16at(4),
        count: u32::from(u16at(6)),
        param1: u32at(8),
        param2: u32at(12),
    };
    let end = 16usize.checked_add(header.payload_size as usize)?;
    if end > buf.len() {
        return None;
    }
    Some((header, 16, end))
}

/// The text of a NUL-terminated string payload: up to the first NUL, or the whole payload
/// when there is none (spec §6.7).
pub fn payload_str(payload: &[u8]) -> &[u8] {
    match payload.iter().position(|&b| b == 0) {
        Some(n) => &payload[..n],
        None => payload,
    }
}

/// Build the reply datagram to a UDP search: VERSION (sequence copied) followed by one
/// SEARCH reply per `(search id)` in `ids`.
pub fn search_reply_datagram(seq: u32, tcp_port: u16, ids: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + ids.len() * 24);
    Header::new(cmd::VERSION, 1, u32::from(MINOR_VERSION), seq, 0).write_to(&mut out);
    for &id in ids {
        push_message(
            &mut out,
            Header::new(cmd::SEARCH, tcp_port, 0, 0xFFFF_FFFF, id),
            &MINOR_VERSION.to_be_bytes(),
        );
    }
    out
}

/// A beacon (RSRV_IS_UP) with sequence number `seq` for a server on `tcp_port`.
pub fn beacon(seq: u32, tcp_port: u16) -> Vec<u8> {
    Header::new(cmd::RSRV_IS_UP, MINOR_VERSION, u32::from(tcp_port), seq, 0).to_bytes()
}

/// The ERROR message for a failed request: the request header copied, then `context`.
/// The payload is capped at 512 bytes, as in rsrv.
pub fn error_message(out: &mut Vec<u8>, request: &Header, cid: u32, eca: Eca, context: &str) {
    let mut payload = request.to_bytes();
    // The copied header says what the request carried; its payload is not copied.
    let max_text = 512 - payload.len() - 1;
    let text = context.as_bytes();
    payload.extend_from_slice(&text[..text.len().min(max_text)]);
    payload.push(0);
    push_message(
        out,
        Header::new(cmd::ERROR, 0, 0, cid, eca.code()),
        &payload,
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Parse a spec hex dump ("0000: 00000000 0001000d ...") into bytes.
    pub(crate) fn hex(dump: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for line in dump.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let body = match line.split_once(':') {
                Some((_, rest)) => rest,
                None => line,
            };
            for group in body.split_whitespace() {
                if !group.chars().all(|c| c.is_ascii_hexdigit()) {
                    break; // the comment column
                }
                for i in (0..group.len()).step_by(2) {
                    out.push(u8::from_str_radix(&group[i..i + 2], 16).unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn search_reply_matches_spec_1_2() {
        let request = hex("0000: 00000000 0001000d 00000001 00000000\n\
                           0010: 00060010 0005000d 00000001 00000001\n\
                           0020: 4445543a 41637175 69726554 696d6500");
        let (v, _, end) = parse_udp_message(&request).unwrap();
        assert_eq!(v.command, cmd::VERSION);
        assert_eq!(v.param1, 1);
        let (s, start, end2) = parse_udp_message(&request[end..]).unwrap();
        assert_eq!(s.command, cmd::SEARCH);
        assert_eq!(s.data_type, 5);
        assert_eq!(
            payload_str(&request[end + start..end + end2]),
            b"DET:AcquireTime"
        );
        let reply = search_reply_datagram(1, 5064, &[1]);
        assert_eq!(
            reply,
            hex("0000: 00000000 0001000d 00000001 00000000\n\
                 0010: 00060008 13c80000 ffffffff 00000001\n\
                 0020: 000d0000 00000000")
        );
    }

    #[test]
    fn beacon_matches_spec_1_3() {
        assert_eq!(beacon(0, 5064), hex("000d0000 000d13c8 00000000 00000000"));
    }

    #[test]
    fn version_and_names_match_spec_3_1_and_3_2() {
        let v = Header::new(cmd::VERSION, 0, 13, 0, 0).to_bytes();
        assert_eq!(v, hex("00000000 0000000d 00000000 00000000"));
        let mut out = Vec::new();
        push_string_message(
            &mut out,
            Header::new(cmd::HOST_NAME, 0, 0, 0, 0),
            b"localhost",
        );
        assert_eq!(
            out,
            hex("0000: 00150010 00000000 00000000 00000000\n\
                 0010: 6c6f6361 6c686f73 74000000 00000000")
        );
        let mut out = Vec::new();
        push_string_message(
            &mut out,
            Header::new(cmd::CLIENT_NAME, 0, 0, 0, 0),
            b"bluesky",
        );
        assert_eq!(
            out,
            hex("0000: 00140008 00000000 00000000 00000000\n0010: 626c7565 736b7900")
        );
    }

    #[test]
    fn extended_header_matches_spec_2_2() {
        let mut h = Header::new(cmd::READ_NOTIFY, 1, 1_048_576, 1, 0x32);
        h.payload_size = 2_097_152;
        let bytes = h.to_bytes();
        assert_eq!(
            bytes,
            hex("0000: 000fffff 00010000 00000001 00000032\n0010: 00200000 00100000")
        );
        match parse_header(&bytes).unwrap() {
            Parsed::Header { header, len } => {
                assert_eq!(len, 24);
                assert_eq!(header, h);
            }
            Parsed::NeedMore => panic!("complete header"),
        }
        assert_eq!(parse_header(&bytes[..20]).unwrap(), Parsed::NeedMore);
    }

    #[test]
    fn misaligned_is_rejected() {
        let bytes = hex("00040007 00060001 00000007 0000002f");
        assert_eq!(
            parse_header(&bytes),
            Err(FrameError::Misaligned {
                command: 4,
                payload_size: 7
            })
        );
    }

    #[test]
    fn error_matches_spec_3_12() {
        let req = Header {
            command: cmd::WRITE,
            payload_size: 8,
            data_type: 6,
            count: 1,
            param1: 7,
            param2: 0x2f,
        };
        let mut out = Vec::new();
        error_message(&mut out, &req, 1, Eca::PutFail, "DET:AcquireTime");
        assert_eq!(
            out,
            hex("0000: 000b0020 00000000 00000001 000000a0\n\
                 0010: 00040008 00060001 00000007 0000002f\n\
                 0020: 4445543a 41637175 69726554 696d6500")
        );
    }

    #[test]
    fn not_found_and_create_fail_layouts() {
        // NOT_FOUND copies the request's type/count/params (spec §1.2).
        let nf = Header::new(cmd::NOT_FOUND, DO_REPLY, 13, 1, 1).to_bytes();
        assert_eq!(nf, hex("000e0000 000a000d 00000001 00000001"));
        let fail = Header::new(cmd::CREATE_CH_FAIL, 0, 0, 1, 0).to_bytes();
        assert_eq!(fail, hex("001a0000 00000000 00000001 00000000"));
        let disc = Header::new(cmd::SERVER_DISCONN, 0, 0, 1, 0).to_bytes();
        assert_eq!(disc, hex("001b0000 00000000 00000001 00000000"));
    }
}
