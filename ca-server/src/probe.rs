//! A minimal blocking CA client that speaks raw messages: what the crate's own tests,
//! examples and measurements use to look at the wire. Not a general client (no search
//! retries, no reconnection, one message at a time).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::proto::{self, Header, Parsed, cmd};

/// One TCP circuit to a server.
#[derive(Debug)]
pub struct Probe {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// What CREATE_CHAN gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Server id of the channel.
    pub sid: u32,
    /// Native DBF type.
    pub native_type: u16,
    /// Native element count.
    pub count: u32,
    /// ACCESS_RIGHTS bits.
    pub access: u32,
}

impl Probe {
    /// Connect, read the server's VERSION, and send VERSION, CLIENT_NAME and HOST_NAME as
    /// libca does.
    pub fn connect(addr: SocketAddr) -> io::Result<Probe> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        let mut p = Probe {
            stream,
            buf: Vec::new(),
        };
        let mut hello = Vec::new();
        Header::new(cmd::VERSION, 0, 13, 0, 0).write_to(&mut hello);
        proto::push_string_message(
            &mut hello,
            Header::new(cmd::CLIENT_NAME, 0, 0, 0, 0),
            b"probe",
        );
        proto::push_string_message(
            &mut hello,
            Header::new(cmd::HOST_NAME, 0, 0, 0, 0),
            b"localhost",
        );
        p.send_raw(&hello)?;
        let (h, _) = p.recv(Duration::from_secs(5))?;
        if h.command != cmd::VERSION {
            return Err(io::Error::other(format!(
                "expected VERSION first, got {h:?}"
            )));
        }
        Ok(p)
    }

    /// The TCP stream (to set options, or to stop reading on purpose).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Send bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Send one message, its payload padded to 8.
    pub fn send(&mut self, header: Header, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::new();
        proto::push_message(&mut out, header, payload);
        self.send_raw(&out)
    }

    /// Receive the next message (header and padded payload) within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<(Header, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let mut chunk = vec![0u8; 256 << 10];
        loop {
            if let Parsed::Header { header, len } =
                proto::parse_header(&self.buf).map_err(io::Error::other)?
            {
                let total = len + header.payload_size as usize;
                if self.buf.len() >= total {
                    let payload = self.buf[len..total].to_vec();
                    self.buf.drain(..total);
                    return Ok((header, payload));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no message in time",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the circuit",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Receive until a message with `command` arrives (others are dropped).
    pub fn recv_cmd(&mut self, command: u16, timeout: Duration) -> io::Result<(Header, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (h, p) = self.recv(left)?;
            if h.command == command {
                return Ok((h, p));
            }
        }
    }

    /// CREATE_CHAN for `name` with client id `cid`: expects ACCESS_RIGHTS then the reply.
    pub fn create_channel(&mut self, name: &str, cid: u32) -> io::Result<ChannelInfo> {
        let mut payload = name.as_bytes().to_vec();
        payload.push(0);
        self.send(Header::new(cmd::CREATE_CHAN, 0, 0, cid, 13), &payload)?;
        let (rights, _) = self.recv(Duration::from_secs(5))?;
        if rights.command == cmd::CREATE_CH_FAIL {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name}: CREATE_CH_FAIL"),
            ));
        }
        if rights.command != cmd::ACCESS_RIGHTS || rights.param1 != cid {
            return Err(io::Error::other(format!(
                "expected ACCESS_RIGHTS, got {rights:?}"
            )));
        }
        let (reply, _) = self.recv(Duration::from_secs(5))?;
        if reply.command != cmd::CREATE_CHAN || reply.param1 != cid {
            return Err(io::Error::other(format!(
                "expected CREATE_CHAN, got {reply:?}"
            )));
        }
        Ok(ChannelInfo {
            sid: reply.param2,
            native_type: reply.data_type,
            count: reply.count,
            access: rights.param2,
        })
    }

    /// READ_NOTIFY of `data_type` × `count` on `sid`; returns the reply.
    pub fn read(
        &mut self,
        sid: u32,
        data_type: u16,
        count: u32,
        ioid: u32,
    ) -> io::Result<(Header, Vec<u8>)> {
        self.send(
            Header::new(cmd::READ_NOTIFY, data_type, count, sid, ioid),
            &[],
        )?;
        self.recv_cmd(cmd::READ_NOTIFY, Duration::from_secs(10))
    }

    /// EVENT_ADD on `sid` with subscription id `subid` and `mask`.
    pub fn subscribe(
        &mut self,
        sid: u32,
        data_type: u16,
        count: u32,
        subid: u32,
        mask: u16,
    ) -> io::Result<()> {
        let mut payload = [0u8; 16];
        payload[12..14].copy_from_slice(&mask.to_be_bytes());
        self.send(
            Header::new(cmd::EVENT_ADD, data_type, count, sid, subid),
            &payload,
        )
    }
}

/// Send a libca-style search datagram (VERSION + SEARCH) for `name` to `server` and wait up
/// to `timeout` for a reply; returns the reply datagram, or `None` when nothing came.
pub fn search(
    server: SocketAddr,
    name: &str,
    id: u32,
    timeout: Duration,
) -> io::Result<Option<Vec<u8>>> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let mut msg = Vec::new();
    Header::new(cmd::VERSION, 1, 13, id, 0).write_to(&mut msg);
    let mut payload = name.as_bytes().to_vec();
    payload.push(0);
    proto::push_message(&mut msg, Header::new(cmd::SEARCH, 5, 13, id, id), &payload);
    sock.send_to(&msg, server)?;
    sock.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Ok(Some(buf[..n].to_vec())),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
