//! A Channel Access client of `detflow serve`'s PVs (prefix `ad:`), by name, over one circuit
//! (the CA crate's probe): reads as numbers or text, puts with completion, for the daemon
//! tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use detflow_ca::Eca;
use detflow_ca::probe::Probe;
use detflow_ca::proto::{Header, cmd};

/// DBR types of the reads and puts.
pub const DBR_STRING: u16 = 0;
pub const DBR_CHAR: u16 = 4;
pub const DBR_DOUBLE: u16 = 6;

/// A value to put.
#[derive(Debug, Clone)]
pub enum Put {
    /// A number, as DBR_DOUBLE.
    Num(f64),
    /// Text, as a NUL-terminated DBR_CHAR array (long strings and enums by name alike).
    Text(String),
}

/// A number to put.
pub fn num(v: f64) -> Put {
    Put::Num(v)
}

/// Text to put.
pub fn text(t: &str) -> Put {
    Put::Text(t.into())
}

/// Reads and writes by name over one circuit.
pub struct Client {
    /// The circuit, for what the methods do not cover (monitors, raw reads).
    pub probe: Probe,
    sids: HashMap<String, (u32, u32)>,
    next: u32,
    /// The daemon's log, shown when a put does not complete.
    log: PathBuf,
    /// Put completions received while waiting for another: ioid → status.
    done: HashMap<u32, u32>,
}

impl Client {
    /// A circuit to the daemon at `addr`, whose log is `log`.
    pub fn connect(addr: SocketAddr, log: PathBuf) -> Client {
        Client {
            probe: Probe::connect(addr).expect("the daemon answers on the port it logged"),
            sids: HashMap::new(),
            next: 1,
            log,
            done: HashMap::new(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The channel of PV `ad:NAME`: its server id and element count.
    pub fn channel(&mut self, name: &str) -> (u32, u32) {
        if let Some(c) = self.sids.get(name) {
            return *c;
        }
        self.next += 1;
        let info = self
            .probe
            .create_channel(&format!("ad:{name}"), self.next)
            .unwrap_or_else(|e| panic!("ad:{name}: {e}"));
        self.sids.insert(name.into(), (info.sid, info.count));
        (info.sid, info.count)
    }

    /// The value of a numeric PV.
    pub fn num(&mut self, name: &str) -> f64 {
        let (sid, _) = self.channel(name);
        self.next += 1;
        let (_, payload) = self.probe.read(sid, DBR_DOUBLE, 1, self.next).unwrap();
        f64::from_be_bytes(payload[..8].try_into().unwrap())
    }

    /// Text of a string, enum (its state name) or long-string PV.
    pub fn text(&mut self, name: &str) -> String {
        let (sid, count) = self.channel(name);
        self.next += 1;
        let (ty, n) = if count > 1 {
            (DBR_CHAR, count)
        } else {
            (DBR_STRING, 1)
        };
        let (_, payload) = self.probe.read(sid, ty, n, self.next).unwrap();
        let end = payload
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(payload.len());
        String::from_utf8_lossy(&payload[..end]).into_owned()
    }

    /// Send a WRITE_NOTIFY; returns its id for [`Client::completed`].
    pub fn put_nowait(&mut self, name: &str, value: &Put) -> u32 {
        let (sid, _) = self.channel(name);
        self.next += 1;
        let (ty, n, payload) = match value {
            Put::Num(v) => (DBR_DOUBLE, 1, v.to_be_bytes().to_vec()),
            Put::Text(t) => {
                let mut b = t.as_bytes().to_vec();
                b.push(0);
                (DBR_CHAR, b.len() as u32, b)
            }
        };
        self.probe
            .send(
                Header::new(cmd::WRITE_NOTIFY, ty, n, sid, self.next),
                &payload,
            )
            .unwrap();
        self.next
    }

    /// Wait at most `timeout` for the WRITE_NOTIFY reply `ioid`; its status.
    pub fn completed(&mut self, ioid: u32, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.done.remove(&ioid) {
                return status;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let (h, _) = self
                .probe
                .recv_cmd(cmd::WRITE_NOTIFY, left)
                .unwrap_or_else(|e| panic!("no completion for put {ioid}: {e}\n{}", self.log()));
            self.done.insert(h.param2, h.param1);
        }
    }

    /// Wait for the WRITE_NOTIFY reply `ioid`; panics unless it succeeded.
    pub fn succeeded(&mut self, ioid: u32) {
        let status = self.completed(ioid, super::EVENT_DEADLINE);
        assert_eq!(
            status,
            Eca::Normal.code(),
            "put {ioid} failed:\n{}",
            self.log()
        );
    }

    /// Put and wait for completion; panics unless it succeeded.
    pub fn put(&mut self, name: &str, value: Put) {
        let id = self.put_nowait(name, &value);
        let status = self.completed(id, super::EVENT_DEADLINE);
        assert_eq!(
            status,
            Eca::Normal.code(),
            "put {name} = {value:?} failed:\n{}",
            self.log()
        );
    }
}
