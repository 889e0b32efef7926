//! The server: configuration (builder and `EPICS_CAS_*` environment), the UDP name-search
//! and beacon thread, the TCP accept thread, and the PV table API the daemon uses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::circuit::{self, CircuitShared};
use crate::error::ServerError;
use crate::proto::{self, cmd};
use crate::pv::{Pv, PvHandle, PvSpec, PvTable, lock};

/// Default CA server port (UDP search and TCP).
pub const DEFAULT_SERVER_PORT: u16 = 5064;
/// Default beacon destination port (the client-side repeater's).
pub const DEFAULT_BEACON_PORT: u16 = 5065;

/// Resolved settings of a running server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port asked for (0: an ephemeral one, the same for UDP and TCP).
    pub port: u16,
    /// Interfaces bound.
    pub interfaces: Vec<Ipv4Addr>,
    /// Where beacons go.
    pub beacon_addrs: Vec<SocketAddrV4>,
    /// Longest gap between beacons.
    pub beacon_period: Duration,
    /// Largest request payload accepted; larger ones get ECA_TOLARGE.
    pub max_payload: usize,
    /// A circuit that stays unwritable this long is closed.
    pub send_timeout: Duration,
    /// Send SERVER_DISCONN for every channel when the server shuts down.
    pub disconnect_on_shutdown: bool,
    /// Print circuit problems to stderr.
    pub log: bool,
    /// Print every request header to stderr (environment `DETFLOW_CA_TRACE=1`).
    pub trace: bool,
}

/// Builds a [`Server`]. Settings not given explicitly come from the environment like rsrv
/// (`EPICS_CAS_SERVER_PORT` then `EPICS_CA_SERVER_PORT`, `EPICS_CAS_INTF_ADDR_LIST`,
/// `EPICS_CAS_BEACON_PORT` then `EPICS_CA_REPEATER_PORT`, `EPICS_CAS_BEACON_ADDR_LIST`,
/// `EPICS_CAS_BEACON_PERIOD` then `EPICS_CA_BEACON_PERIOD`), else the defaults: port 5064,
/// interface 127.0.0.1, beacons to the interfaces' addresses (127.0.0.1 for 0.0.0.0) on 5065.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ServerBuilder {
    port: Option<u16>,
    interfaces: Option<Vec<Ipv4Addr>>,
    beacon_port: Option<u16>,
    beacon_addrs: Option<Vec<SocketAddrV4>>,
    beacon_period: Option<Duration>,
    max_payload: Option<usize>,
    send_timeout: Option<Duration>,
    no_env: bool,
    keep_channels_on_shutdown: bool,
    quiet: bool,
}

fn env_var(names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|&n| {
        std::env::var(n)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (n, v))
    })
}

fn bad_env(var: &'static str, value: &str, reason: impl Into<String>) -> ServerError {
    ServerError::Env {
        var,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

impl ServerBuilder {
    /// The UDP and TCP port (0 picks a free one; see [`Server::port`]).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Add an interface address to bind (replaces the default and the environment).
    pub fn interface(mut self, addr: Ipv4Addr) -> Self {
        self.interfaces.get_or_insert_with(Vec::new).push(addr);
        self
    }

    /// Beacon destination port.
    pub fn beacon_port(mut self, port: u16) -> Self {
        self.beacon_port = Some(port);
        self
    }

    /// Add a beacon destination (replaces the default and the environment).
    pub fn beacon_addr(mut self, addr: SocketAddrV4) -> Self {
        self.beacon_addrs.get_or_insert_with(Vec::new).push(addr);
        self
    }

    /// Longest gap between beacons (default 15 s).
    pub fn beacon_period(mut self, period: Duration) -> Self {
        self.beacon_period = Some(period);
        self
    }

    /// Largest request payload accepted (default 64 MiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// Close a circuit that stays unwritable this long (default 30 s).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = Some(timeout);
        self
    }

    /// Ignore the `EPICS_*` environment variables.
    pub fn ignore_env(mut self) -> Self {
        self.no_env = true;
        self
    }

    /// On shutdown, just close the circuits instead of sending SERVER_DISCONN first.
    pub fn keep_channels_on_shutdown(mut self) -> Self {
        self.keep_channels_on_shutdown = true;
        self
    }

    /// Do not print circuit problems to stderr.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Resolve the settings (explicit, then environment, then defaults).
    pub fn config(&self) -> Result<Config, ServerError> {
        let env = |names: &[&'static str]| if self.no_env { None } else { env_var(names) };
        let parse_port = |(var, v): (&'static str, String)| {
            v.trim()
                .parse::<u16>()
                .map_err(|e| bad_env(var, &v, e.to_string()))
        };
        let port = match self.port {
            Some(p) => p,
            None => env(&["EPICS_CAS_SERVER_PORT", "EPICS_CA_SERVER_PORT"])
                .map(parse_port)
                .transpose()?
                .unwrap_or(DEFAULT_SERVER_PORT),
        };
        let interfaces = match &self.interfaces {
            Some(list) => list.clone(),
            None => match env(&["EPICS_CAS_INTF_ADDR_LIST"]) {
                Some((var, v)) => v
                    .split_whitespace()
                    .map(|a| {
                        // Entries may carry a port (rsrv ignores it for the interface).
                        let host = a.split(':').next().unwrap_or(a);
                        host.parse::<Ipv4Addr>()
                            .map_err(|e| bad_env(var, &v, format!("{a:?}: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None => vec![Ipv4Addr::LOCALHOST],
            },
        };
        let beacon_port = match self.beacon_port {
            Some(p) => p,
            None => env(&["EPICS_CAS_BEACON_PORT", "EPICS_CA_REPEATER_PORT"])
                .map(parse_port)
                .transpose()?
                .unwrap_or(DEFAULT_BEACON_PORT),
        };
        let beacon_addrs = match &self.beacon_addrs {
            Some(list) => list.clone(),
            None => match env(&["EPICS_CAS_BEACON_ADDR_LIST"]) {
                Some((var, v)) => v
                    .split_whitespace()
                    .map(|a| match a.split_once(':') {
                        Some((h, p)) => Ok(SocketAddrV4::new(
                            h.parse()
                                .map_err(|e| bad_env(var, &v, format!("{a:?}: {e}")))?,
                            p.parse()
                                .map_err(|e| bad_env(var, &v, format!("{a:?}: {e}")))?,
                        )),
                        None => Ok(SocketAddrV4::new(
                            a.parse()
                                .map_err(|e| bad_env(var, &v, format!("{a:?}: {e}")))?,
                            beacon_port,
                        )),
                    })
                    .collect::<Result<Vec<_>, ServerError>>()?,
                None => {
                    // No auto broadcast list: beacons stay on the bound addresses, and the
                    // wildcard means loopback.
                    let mut v: Vec<SocketAddrV4> = interfaces
                        .iter()
                        .map(|ip| {
                            let ip = if ip.is_unspecified() {
                                Ipv4Addr::LOCALHOST
                            } else {
                                *ip
                            };
                            SocketAddrV4::new(ip, beacon_port)
                        })
                        .collect();
                    v.dedup();
                    v
                }
            },
        };
        let beacon_period = match self.beacon_period {
            Some(p) => p,
            None => match env(&["EPICS_CAS_BEACON_PERIOD", "EPICS_CA_BEACON_PERIOD"]) {
                Some((var, v)) => {
                    let s: f64 = v
                        .trim()
                        .parse()
                        .map_err(|e| bad_env(var, &v, format!("{e}")))?;
                    if !(s > 0.0 && s < 1e6) {
                        return Err(bad_env(var, &v, "must be a positive number of seconds"));
                    }
                    Duration::from_secs_f64(s)
                }
                None => Duration::from_secs(15),
            },
        };
        if interfaces.is_empty() {
            return Err(bad_env("EPICS_CAS_INTF_ADDR_LIST", "", "no interface"));
        }
        Ok(Config {
            port,
            interfaces,
            beacon_addrs,
            beacon_period,
            max_payload: self.max_payload.unwrap_or(64 << 20),
            send_timeout: self.send_timeout.unwrap_or(Duration::from_secs(30)),
            disconnect_on_shutdown: !self.keep_channels_on_shutdown,
            log: !self.quiet,
            trace: !self.no_env && std::env::var("DETFLOW_CA_TRACE").is_ok_and(|v| v == "1"),
        })
    }

    /// Bind the sockets and start serving (PVs can be added before or after clients come).
    pub fn build(self) -> Result<Server, ServerError> {
        Server::start(self.config()?)
    }
}

/// State shared by the server's threads and circuits.
pub(crate) struct ServerShared {
    pub pvs: PvTable,
    pub next_sid: AtomicU32,
    pub tcp_port: u16,
    pub config: Config,
    stop: AtomicBool,
    circuits: Mutex<Vec<LiveCircuit>>,
}

/// A connected circuit and its reader and writer threads.
type LiveCircuit = (Arc<CircuitShared>, Vec<JoinHandle<()>>);

/// A running Channel Access server. Dropping it shuts it down.
pub struct Server {
    shared: Arc<ServerShared>,
    threads: Vec<JoinHandle<()>>,
    listen_addrs: Vec<SocketAddr>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("port", &self.shared.tcp_port)
            .field("interfaces", &self.shared.config.interfaces)
            .field("pvs", &self.shared.pvs.len())
            .finish()
    }
}

fn bind_udp(addr: SocketAddrV4, reuse: bool, what: &'static str) -> Result<UdpSocket, ServerError> {
    let err = |source| ServerError::Bind {
        what,
        addr: SocketAddr::V4(addr),
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if reuse {
        // Share the search port with another CA server on this host, as rsrv does (§1.1).
        s.set_reuse_address(true).map_err(err)?;
        #[cfg(unix)]
        s.set_reuse_port(true).map_err(err)?;
    }
    s.bind(&SocketAddr::V4(addr).into()).map_err(err)?;
    Ok(s.into())
}

fn bind_tcp(addr: SocketAddrV4) -> Result<TcpListener, ServerError> {
    let err = |source| ServerError::Bind {
        what: "TCP",
        addr: SocketAddr::V4(addr),
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    // Allow a restart while old circuits sit in TIME_WAIT.
    s.set_reuse_address(true).map_err(err)?;
    s.bind(&SocketAddr::V4(addr).into()).map_err(err)?;
    s.listen(128).map_err(err)?;
    Ok(s.into())
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, ServerError> {
    std::thread::Builder::new()
        .name(name.clone())
        .stack_size(256 << 10)
        .spawn(f)
        .map_err(|source| ServerError::Thread { name, source })
}

impl Server {
    /// A builder with defaults and the environment.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    fn start(config: Config) -> Result<Server, ServerError> {
        // TCP first: with port 0 its ephemeral port becomes the UDP port too.
        let mut listeners = Vec::new();
        let mut port = config.port;
        for ip in &config.interfaces {
            let l = bind_tcp(SocketAddrV4::new(*ip, port))?;
            if port == 0 {
                port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            }
            listeners.push(l);
        }
        // A port of our own choosing (0 asked) is not shared: with SO_REUSEADDR on it, the
        // kernel may give the same port to a client's ephemeral socket that sets
        // SO_REUSEADDR too (caproto's search sockets do), and the client's search replies
        // would then come back to us. A configured port is shared, as rsrv shares 5064.
        let share = config.port != 0;
        let mut udps = Vec::new();
        for ip in &config.interfaces {
            let u = bind_udp(SocketAddrV4::new(*ip, port), share, "UDP search")?;
            u.set_read_timeout(Some(Duration::from_millis(100)))
                .map_err(|source| ServerError::Bind {
                    what: "UDP search",
                    addr: SocketAddr::V4(SocketAddrV4::new(*ip, port)),
                    source,
                })?;
            udps.push(u);
        }
        let beacon_src = if config.interfaces[0].is_unspecified() {
            Ipv4Addr::LOCALHOST
        } else {
            config.interfaces[0]
        };
        let beacon_sock = bind_udp(SocketAddrV4::new(beacon_src, 0), false, "UDP beacon")?;
        let shared = Arc::new(ServerShared {
            pvs: PvTable::default(),
            next_sid: AtomicU32::new(1),
            tcp_port: port,
            config,
            stop: AtomicBool::new(false),
            circuits: Mutex::new(Vec::new()),
        });
        let listen_addrs: Vec<SocketAddr> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let mut threads = Vec::new();
        for (i, udp) in udps.into_iter().enumerate() {
            let s = shared.clone();
            let beacon = if i == 0 {
                beacon_sock.try_clone().ok()
            } else {
                None
            };
            threads.push(spawn(format!("ca-udp-{i}"), move || {
                run_udp(&s, &udp, beacon)
            })?);
        }
        for (i, l) in listeners.into_iter().enumerate() {
            let s = shared.clone();
            threads.push(spawn(format!("ca-accept-{i}"), move || run_accept(&s, &l))?);
        }
        Ok(Server {
            shared,
            threads,
            listen_addrs,
        })
    }

    /// The UDP and TCP port in use.
    pub fn port(&self) -> u16 {
        self.shared.tcp_port
    }

    /// The resolved settings.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The TCP addresses listened on.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen_addrs
    }

    /// Serve a new PV; clients can find it at once.
    pub fn add_pv(&self, spec: PvSpec) -> Result<PvHandle, ServerError> {
        let initial = spec.validate()?;
        let pv = Arc::new(Pv::new(spec, initial));
        self.shared.pvs.insert(pv.clone())?;
        Ok(PvHandle { pv })
    }

    /// A handle on a served PV.
    pub fn pv(&self, name: &str) -> Option<PvHandle> {
        self.shared.pvs.get(name).map(|pv| PvHandle { pv })
    }

    /// Stop serving a PV: its channels get SERVER_DISCONN and their monitors end.
    pub fn remove_pv(&self, name: &str) -> bool {
        let Some(pv) = self.shared.pvs.remove(name) else {
            return false;
        };
        let (links, subs) = {
            let mut st = pv.state();
            st.removed = true;
            (
                std::mem::take(&mut st.channels),
                std::mem::take(&mut st.subs),
            )
        };
        for sub in subs {
            sub.cancelled.store(true, Ordering::Release);
        }
        for link in links {
            if let Some(c) = link.circuit.upgrade() {
                c.disconnect_channel(link.sid);
            }
        }
        true
    }

    /// Number of PVs served.
    pub fn pv_count(&self) -> usize {
        self.shared.pvs.len()
    }

    /// Number of connected clients (circuits).
    pub fn client_count(&self) -> usize {
        self.shared.reap();
        lock(&self.shared.circuits).len()
    }

    /// Number of live monitors over all clients.
    pub fn subscription_count(&self) -> usize {
        lock(&self.shared.circuits)
            .iter()
            .map(|(c, _)| c.subscription_count())
            .sum()
    }

    /// Stop: send SERVER_DISCONN for every channel (unless disabled), close every circuit
    /// and join the server's threads (bounded: a circuit thread stuck in a send is left to
    /// its send timeout).
    pub fn shutdown(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if self.shared.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wake the accept threads.
        for a in &self.listen_addrs {
            let mut a = *a;
            if a.ip().is_unspecified() {
                a.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
            let _ = TcpStream::connect_timeout(&a, Duration::from_millis(200));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let circuits = std::mem::take(&mut *lock(&self.shared.circuits));
        for (c, _) in &circuits {
            if self.shared.config.disconnect_on_shutdown {
                c.disconnect_all();
            } else {
                c.close();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for (c, handles) in circuits {
            while !c.is_closed() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if c.is_closed() {
                for h in handles {
                    let _ = h.join();
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

impl ServerShared {
    /// Forget circuits whose threads have finished.
    fn reap(&self) {
        let mut circuits = lock(&self.circuits);
        let mut i = 0;
        while i < circuits.len() {
            if circuits[i].0.is_closed() && circuits[i].1.iter().all(|h| h.is_finished()) {
                let (_, handles) = circuits.swap_remove(i);
                for h in handles {
                    let _ = h.join();
                }
            } else {
                i += 1;
            }
        }
    }
}

fn run_accept(shared: &Arc<ServerShared>, listener: &TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                shared.reap();
                match circuit::spawn(shared.clone(), stream, peer) {
                    Ok((c, handles)) => lock(&shared.circuits).push((c, handles)),
                    Err(e) => {
                        if shared.config.log {
                            eprintln!("detflow-ca: cannot serve {peer}: {e}");
                        }
                    }
                }
            }
            Err(e) => {
                if shared.config.log {
                    eprintln!("detflow-ca: accept failed: {e}");
                }
                // Out of descriptors and the like: do not spin.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Answer the name searches of one datagram; returns the reply datagrams.
pub(crate) fn answer_search(pvs: &PvTable, tcp_port: u16, datagram: &[u8]) -> Vec<Vec<u8>> {
    let mut seq = 0u32;
    let mut minor = 0u16;
    let mut ids = Vec::new();
    let mut rest = datagram;
    while let Some((h, start, end)) = proto::parse_udp_message(rest) {
        match h.command {
            cmd::VERSION => {
                seq = h.param1;
                minor = h.count.min(u32::from(u16::MAX)) as u16;
            }
            cmd::SEARCH => {
                // libca sends VERSION first; a search on its own carries its minor in count.
                let client_minor = if minor == 0 { h.count as u16 } else { minor };
                let name = proto::payload_str(&rest[start..end]);
                if client_minor >= 4 && name.len() > 1 && pvs.resolve(name).is_some() {
                    ids.push(h.param1);
                }
            }
            _ => {}
        }
        let next = proto::align8(end).min(rest.len());
        rest = &rest[next..];
    }
    // Keep each reply datagram under ~1472 bytes: 16 + 60 × 24.
    ids.chunks(60)
        .map(|c| proto::search_reply_datagram(seq, tcp_port, c))
        .collect()
}

fn run_udp(shared: &Arc<ServerShared>, udp: &UdpSocket, beacon: Option<UdpSocket>) {
    let mut buf = vec![0u8; 65536];
    let mut beacon_seq = 0u32;
    let mut beacon_gap = Duration::from_millis(20);
    let mut next_beacon = Instant::now() + beacon_gap;
    while !shared.stop.load(Ordering::Acquire) {
        if let Some(b) = &beacon
            && Instant::now() >= next_beacon
        {
            let msg = proto::beacon(beacon_seq, shared.tcp_port);
            for addr in &shared.config.beacon_addrs {
                let _ = b.send_to(&msg, addr);
            }
            beacon_seq = beacon_seq.wrapping_add(1);
            beacon_gap = (beacon_gap * 2).min(shared.config.beacon_period);
            next_beacon = Instant::now() + beacon_gap;
        }
        match udp.recv_from(&mut buf) {
            Ok((n, from)) => {
                for reply in answer_search(&shared.pvs, shared.tcp_port, &buf[..n]) {
                    let _ = udp.send_to(&reply, from);
                }
            }
            Err(_) => continue, // timeout: check stop and beacons
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_environment() {
        let c = Server::builder().ignore_env().config().unwrap();
        assert_eq!(c.port, DEFAULT_SERVER_PORT);
        assert_eq!(c.interfaces, vec![Ipv4Addr::LOCALHOST]);
        assert_eq!(
            c.beacon_addrs,
            vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, DEFAULT_BEACON_PORT)]
        );
        assert_eq!(c.beacon_period, Duration::from_secs(15));
        let c = Server::builder()
            .ignore_env()
            .port(7000)
            .interface(Ipv4Addr::UNSPECIFIED)
            .beacon_port(7001)
            .config()
            .unwrap();
        assert_eq!(c.port, 7000);
        assert_eq!(
            c.beacon_addrs,
            vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7001)],
            "the wildcard beacons to loopback, never broadcast"
        );
    }

    #[test]
    fn search_of_several_names_in_one_datagram() {
        let pvs = PvTable::default();
        let spec = PvSpec::long("AB", 0);
        let v = spec.validate().unwrap();
        pvs.insert(Arc::new(Pv::new(spec, v))).unwrap();
        let mut dg = Vec::new();
        proto::Header::new(cmd::VERSION, 1, 13, 77, 0).write_to(&mut dg);
        for (id, name) in [
            (1u32, &b"AB\0"[..]),
            (2, b"B\0"),
            (3, b"AB.VAL\0"),
            (4, b"A\0"),
        ] {
            proto::push_message(
                &mut dg,
                proto::Header::new(cmd::SEARCH, 5, 13, id, id),
                name,
            );
        }
        let replies = answer_search(&pvs, 6000, &dg);
        assert_eq!(replies.len(), 1);
        let want = proto::search_reply_datagram(77, 6000, &[1, 3]);
        assert_eq!(replies[0], want);
        // Minor version < 4: ignored.
        let mut old = Vec::new();
        proto::Header::new(cmd::VERSION, 1, 3, 1, 0).write_to(&mut old);
        proto::push_message(
            &mut old,
            proto::Header::new(cmd::SEARCH, 5, 3, 1, 1),
            b"A\0",
        );
        assert!(answer_search(&pvs, 6000, &old).is_empty());
    }
}
