//! The UDP backend: frames that arrive split into datagrams, as detector streams send them,
//! reassembled in place into the caller's buffer (the ring slot). [`UdpSender`] is the
//! matching sender (`detflow udp-send`).
//!
//! # Packet format
//!
//! Every datagram is a 24-byte header, little-endian, then payload:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `0x574C_4644` (`"DFLW"` on the wire) |
//! | 4 | 8 | frame id: 1, 2, 3 … per stream, never reused |
//! | 12 | 4 | packet index, `0..packet count` |
//! | 16 | 4 | packet count of this frame, `1..=65536` |
//! | 20 | 4 | frame bytes |
//!
//! Every packet of a frame carries `ceil(frame bytes / packet count)` payload bytes, except
//! the last, which carries the rest; packet `i` goes at byte `i * ceil(...)` of the frame.
//!
//! # Reception
//!
//! A run starts at the first packet 0 it sees; frames are expected in id order. A frame is
//! complete when all its packets arrived; it is incomplete when a packet of a later frame
//! arrives first, or when none of its packets came for [`FRAME_TIMEOUT`]. An incomplete frame
//! is, by [`Incomplete`] policy, either dropped (an error of kind `Incomplete`) or delivered
//! with the missing bytes zeroed, followed by an `Incomplete` error that counts it. A frame id
//! skipped entirely is reported as kind `FrameLost`. Packets of earlier frames, duplicates
//! and datagrams that are not of this stream are ignored.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use detflow_hal::{
    AcquisitionConfig, ColorMode, Detector, EpicsTimestamp, ErrorKind, ErrorType, FrameMeta,
    FrameShape, FrameSource, ImageMode, PixelType, SensorInfo, TriggerMode,
};

/// The header's magic number.
pub const MAGIC: u32 = 0x574C_4644;
/// Bytes of the packet header.
pub const HEADER_BYTES: usize = 24;
/// Most packets one frame may have.
pub const MAX_PACKETS: u32 = 65_536;
/// Largest datagram payload.
pub const MAX_PAYLOAD: usize = 65_507 - HEADER_BYTES;
/// Payload per packet of [`UdpSender`] unless told otherwise: fits a 9000-byte jumbo frame.
pub const DEFAULT_PAYLOAD: usize = 8192;
/// A started frame with no packet for this long is incomplete.
pub const FRAME_TIMEOUT: Duration = Duration::from_millis(100);
/// Receive buffer asked of the kernel (it may grant less).
const RECV_BUFFER: usize = 8 << 20;

/// The header of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Frame id.
    pub frame_id: u64,
    /// Index of this packet in the frame.
    pub packet_index: u32,
    /// Packets of the frame.
    pub packet_count: u32,
    /// Bytes of the whole frame.
    pub frame_bytes: u32,
}

impl PacketHeader {
    /// The header's wire form.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..12].copy_from_slice(&self.frame_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.packet_index.to_le_bytes());
        b[16..20].copy_from_slice(&self.packet_count.to_le_bytes());
        b[20..24].copy_from_slice(&self.frame_bytes.to_le_bytes());
        b
    }

    /// Parses a datagram's header; `None` if it is not one of ours or is inconsistent.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        if b.len() < HEADER_BYTES || u32_at(0) != MAGIC {
            return None;
        }
        let h = PacketHeader {
            frame_id: u64::from_le_bytes(b[4..12].try_into().ok()?),
            packet_index: u32_at(12),
            packet_count: u32_at(16),
            frame_bytes: u32_at(20),
        };
        (h.packet_count >= 1 && h.packet_count <= MAX_PACKETS && h.packet_index < h.packet_count)
            .then_some(h)
    }

    /// Where this packet's payload goes in the frame, and how long it is.
    pub fn span(&self) -> (usize, usize) {
        let per = (self.frame_bytes as usize).div_ceil(self.packet_count as usize);
        let start = (self.packet_index as usize * per).min(self.frame_bytes as usize);
        let end = (start + per).min(self.frame_bytes as usize);
        (start, end - start)
    }
}

/// What the receiver does with a frame whose packets did not all arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Incomplete {
    /// Discard it: an error of kind `Incomplete`.
    #[default]
    Drop,
    /// Deliver it with the missing bytes zeroed, then report it as `Incomplete`.
    Flag,
}

impl FromStr for Incomplete {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop" => Ok(Incomplete::Drop),
            "flag" => Ok(Incomplete::Flag),
            _ => Err("expected drop or flag".into()),
        }
    }
}

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Incomplete::Drop => "drop",
            Incomplete::Flag => "flag",
        })
    }
}

/// Sends frames as datagrams of [`PacketHeader`] + payload.
#[derive(Debug)]
pub struct UdpSender {
    socket: UdpSocket,
    payload: usize,
    datagram: Vec<u8>,
}

impl UdpSender {
    /// A sender to `to` with `payload` bytes per packet (clamped to `1..=MAX_PAYLOAD`), from
    /// an ephemeral port on the matching loopback or unspecified address.
    pub fn new(to: SocketAddr, payload: usize) -> io::Result<Self> {
        let local: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(to)?;
        let payload = payload.clamp(1, MAX_PAYLOAD);
        Ok(UdpSender {
            socket,
            payload,
            datagram: vec![0u8; HEADER_BYTES + payload],
        })
    }

    /// Sends one frame as `ceil(len / payload)` datagrams.
    pub fn send_frame(&mut self, frame_id: u64, frame: &[u8]) -> io::Result<()> {
        let count = frame.len().div_ceil(self.payload).max(1);
        let count = u32::try_from(count)
            .ok()
            .filter(|c| *c <= MAX_PACKETS)
            .ok_or_else(|| io::Error::other("a frame of more than 65536 packets"))?;
        let frame_bytes = u32::try_from(frame.len())
            .map_err(|_| io::Error::other("a frame of more than 4 GiB"))?;
        for i in 0..count {
            let h = PacketHeader {
                frame_id,
                packet_index: i,
                packet_count: count,
                frame_bytes,
            };
            let (at, len) = h.span();
            self.datagram[..HEADER_BYTES].copy_from_slice(&h.encode());
            self.datagram[HEADER_BYTES..HEADER_BYTES + len].copy_from_slice(&frame[at..at + len]);
            // A full socket buffer (ENOBUFS) is waited out briefly rather than dropped.
            let mut tries = 0;
            loop {
                match self.socket.send(&self.datagram[..HEADER_BYTES + len]) {
                    Ok(_) => break,
                    Err(e) if tries < 100 && e.raw_os_error() == Some(libc::ENOBUFS) => {
                        tries += 1;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// What `detflow udp-send` sends: the simulated detector's frames, as `detflow acquire`
/// makes them for the same settings and seed.
#[derive(Debug, Clone, PartialEq)]
pub struct SimStream {
    /// Where to send.
    pub to: SocketAddr,
    /// Frames to send; 0 until `stop` is set.
    pub frames: u64,
    /// Frame size.
    pub size: (u32, u32),
    /// Pixel type.
    pub pixel_type: PixelType,
    /// Simulated image.
    pub mode: detflow_sim::SimMode,
    /// Simulation seed.
    pub seed: u64,
    /// Exposure of each frame.
    pub exposure: Duration,
    /// Frame period; 0 as fast as possible.
    pub period: Duration,
    /// Payload bytes per datagram.
    pub packet_bytes: usize,
}

/// What was sent.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SendReport {
    /// Frames sent.
    pub frames: u64,
    /// Datagrams sent.
    pub packets: u64,
    /// Frame bytes sent (headers not included).
    pub bytes: u64,
    /// Seconds from the first frame to the last.
    pub elapsed_s: f64,
}

/// Why [`send_sim`] stopped short.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The simulated detector could not be made.
    #[error("cannot create the simulated detector")]
    Create(#[source] detflow_sim::SensorError),
    /// More frames than one run can count.
    #[error("frames: at most 2^32 - 1")]
    Frames(#[source] std::num::TryFromIntError),
    /// The simulated detector refused the settings.
    #[error("the simulated detector refused the settings")]
    Refused(#[source] detflow_sim::SensorError),
    /// The simulated detector did not start.
    #[error("the simulated detector did not start")]
    Start(#[source] detflow_sim::SensorError),
    /// The simulated detector failed while running.
    #[error("simulated detector")]
    Detector(#[source] detflow_sim::SensorError),
    /// The sending socket could not be made.
    #[error("cannot send to {to}")]
    Socket {
        /// The destination.
        to: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A frame could not be sent.
    #[error("sending frame {frame} to {to}")]
    Send {
        /// Its unique id.
        frame: u64,
        /// The destination.
        to: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Runs the simulated detector and sends each frame over UDP, with the frame's unique id as
/// the frame id, until `frames` were sent or `stop` is set.
pub fn send_sim(
    s: &SimStream,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<SendReport, SendError> {
    let mut det = detflow_sim::SimDetector::new(detflow_sim::SimConfig {
        max_width: s.size.0,
        max_height: s.size.1,
        seed: s.seed,
        params: detflow_sim::SimParams::demo(s.mode, s.size, s.pixel_type),
    })
    .map_err(SendError::Create)?;
    let shape = det
        .configure(&AcquisitionConfig {
            roi: detflow_hal::Roi::full(s.size.0, s.size.1),
            pixel_type: s.pixel_type,
            exposure: s.exposure,
            period: s.period,
            image_mode: if s.frames == 0 {
                ImageMode::Continuous
            } else {
                ImageMode::Multiple
            },
            num_images: u32::try_from(s.frames.max(1)).map_err(SendError::Frames)?,
            ..AcquisitionConfig::default()
        })
        .map_err(SendError::Refused)?;
    let mut sender = UdpSender::new(s.to, s.packet_bytes)
        .map_err(|source| SendError::Socket { to: s.to, source })?;
    let mut buf = vec![0u8; shape.bytes()];
    let per_frame = shape.bytes().div_ceil(sender.payload).max(1) as u64;
    let mut report = SendReport {
        frames: 0,
        packets: 0,
        bytes: 0,
        elapsed_s: 0.0,
    };
    det.start().map_err(SendError::Start)?;
    let t0 = Instant::now();
    while det.is_acquiring() && !stop.load(std::sync::atomic::Ordering::Acquire) {
        let meta = match det.read_frame(&mut buf, Duration::from_millis(50)) {
            Ok(m) => m,
            Err(e) if detflow_hal::Error::kind(&e) == ErrorKind::Timeout => continue,
            Err(e) if detflow_hal::Error::kind(&e) == ErrorKind::NotAcquiring => break,
            Err(e) => return Err(SendError::Detector(e)),
        };
        sender
            .send_frame(meta.unique_id, &buf)
            .map_err(|source| SendError::Send {
                frame: meta.unique_id,
                to: s.to,
                source,
            })?;
        report.frames += 1;
        report.packets += per_frame;
        report.bytes += buf.len() as u64;
    }
    let _ = det.stop();
    report.elapsed_s = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// A receive error: the message and the HAL kind.
pub type UdpError = super::BackendError;

fn err(kind: ErrorKind, message: impl Into<String>) -> UdpError {
    super::BackendError::new(kind, message)
}

/// A frame being assembled.
#[derive(Debug, Clone, Copy)]
struct Assembly {
    id: u64,
    count: u32,
    got: u32,
    last_packet: Instant,
}

/// One run's reception state.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    /// The id expected next (`None` until the first packet 0).
    next_id: Option<u64>,
    /// Frames accounted for (delivered, incomplete or lost).
    accounted: u64,
    current: Option<Assembly>,
    /// Lost frames found and not yet reported, and the first such id.
    pending_lost: u64,
    lost_id: u64,
    /// A flagged incomplete frame was delivered and is yet to be reported.
    pending_flag: Option<u64>,
    /// Every frame of the run is accounted for.
    over: bool,
}

/// Receives frames split into datagrams on a UDP socket.
#[derive(Debug)]
pub struct UdpReceiver {
    socket: UdpSocket,
    local: SocketAddr,
    sensor: (u32, u32),
    pixel_type: PixelType,
    policy: Incomplete,
    config: AcquisitionConfig,
    shape: FrameShape,
    limit: Option<u64>,
    run: Option<Run>,
    /// One datagram, received and not yet used (`held` bytes of it when `Some`).
    datagram: Vec<u8>,
    held: Option<usize>,
    /// Packets of the current frame received, one bit each.
    received: Vec<u64>,
    array_counter: u64,
}

impl UdpReceiver {
    /// Binds `listen` for frames of `width` x `height` pixels of `pixel_type` (what the sender
    /// sends), handling incomplete frames by `policy`.
    pub fn bind(
        listen: SocketAddr,
        (width, height): (u32, u32),
        pixel_type: PixelType,
        policy: Incomplete,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind(listen)?;
        set_recv_buffer(&socket, RECV_BUFFER);
        let local = socket.local_addr()?;
        let shape = FrameShape {
            width,
            height,
            pixel_type,
            color_mode: ColorMode::Mono,
        };
        Ok(UdpReceiver {
            socket,
            local,
            sensor: (width, height),
            pixel_type,
            policy,
            config: AcquisitionConfig {
                roi: detflow_hal::Roi::full(width, height),
                pixel_type,
                ..AcquisitionConfig::default()
            },
            shape,
            limit: Some(100),
            run: None,
            datagram: vec![0u8; 65_536],
            held: None,
            received: vec![0u64; (MAX_PACKETS as usize).div_ceil(64)],
            array_counter: 0,
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Drops every datagram waiting in the socket.
    fn drain_socket(&mut self) {
        if self.socket.set_nonblocking(true).is_ok() {
            while self.socket.recv(&mut self.datagram).is_ok() {}
            let _ = self.socket.set_nonblocking(false);
        }
        self.held = None;
    }

    /// The next datagram's length, waiting until `until` at most.
    fn next_datagram(&mut self, until: Instant) -> Result<Option<usize>, UdpError> {
        if let Some(n) = self.held.take() {
            return Ok(Some(n));
        }
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(None);
        }
        let _ = self
            .socket
            .set_read_timeout(Some(wait.max(Duration::from_micros(100))));
        match self.socket.recv(&mut self.datagram) {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(err(ErrorKind::Bus, format!("udp {}: {e}", self.local))),
        }
    }

    fn report_pending(&mut self) -> Option<UdpError> {
        let run = self.run.as_mut()?;
        if let Some(id) = run.pending_flag.take() {
            return Some(err(
                ErrorKind::Incomplete,
                format!("frame {id} was delivered with packets missing (zeroed)"),
            ));
        }
        if run.pending_lost > 0 {
            run.pending_lost -= 1;
            let id = run.lost_id;
            run.lost_id += 1;
            return Some(err(
                ErrorKind::FrameLost,
                format!("frame {id} never arrived"),
            ));
        }
        None
    }

    /// Counts one more frame of the run; the run is over at the limit.
    fn account(&mut self) {
        if let Some(run) = self.run.as_mut() {
            run.accounted += 1;
            if self.limit.is_some_and(|n| run.accounted >= n) {
                run.over = true;
            }
        }
    }

    /// Ends the current frame as incomplete; what the caller returns.
    fn incomplete(&mut self, buf: &mut [u8]) -> Result<FrameMeta, UdpError> {
        let Some(run) = self.run.as_mut() else {
            return Err(err(ErrorKind::NotAcquiring, "not acquiring"));
        };
        let Some(a) = run.current.take() else {
            return Err(err(ErrorKind::Timeout, "no frame"));
        };
        run.next_id = Some(a.id + 1);
        self.account();
        let message = format!(
            "frame {} is missing {} of {} packets",
            a.id,
            a.count - a.got,
            a.count
        );
        match self.policy {
            Incomplete::Drop => Err(err(ErrorKind::Incomplete, message)),
            Incomplete::Flag => {
                let frame_bytes = self.shape.bytes() as u32;
                for i in 0..a.count {
                    if self.received[i as usize / 64] & (1 << (i % 64)) == 0 {
                        let h = PacketHeader {
                            frame_id: a.id,
                            packet_index: i,
                            packet_count: a.count,
                            frame_bytes,
                        };
                        let (at, len) = h.span();
                        buf[at..at + len].fill(0);
                    }
                }
                if let Some(run) = self.run.as_mut() {
                    run.pending_flag = Some(a.id);
                }
                Ok(self.meta(a.id))
            }
        }
    }

    fn meta(&mut self, id: u64) -> FrameMeta {
        self.array_counter += 1;
        let timestamp = EpicsTimestamp::now();
        FrameMeta {
            unique_id: id,
            timestamp,
            unix_time_s: timestamp.unix_seconds(),
            shape: self.shape,
        }
    }
}

/// Asks for a larger socket receive buffer; the kernel may cap it (net.core.rmem_max).
fn set_recv_buffer(socket: &UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd as _;
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the open socket `socket` borrows; the option value is a
    // c_int living for the call, with its size passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl ErrorType for UdpReceiver {
    type Error = UdpError;
}

impl Detector for UdpReceiver {
    fn info(&self) -> SensorInfo {
        let name = |s: &str| heapless::String::try_from(s).unwrap_or_default();
        let mut pixel_types = heapless::Vec::new();
        let _ = pixel_types.push(self.pixel_type);
        SensorInfo {
            manufacturer: name("detflow"),
            model: name("UDP stream receiver"),
            max_width: self.sensor.0,
            max_height: self.sensor.1,
            pixel_types,
        }
    }

    /// The stream's frames are what the sender sends: only the whole frame, unbinned, of the
    /// stream's pixel type is accepted; exposure and period are the sender's.
    fn configure(&mut self, c: &AcquisitionConfig) -> Result<FrameShape, UdpError> {
        let bad = |m: String| Err(err(ErrorKind::InvalidConfig, m));
        if self.run.is_some_and(|r| !r.over) {
            return bad("cannot configure while acquiring: stop first".into());
        }
        let full = detflow_hal::Roi::full(self.sensor.0, self.sensor.1);
        if c.roi != full || c.binning != detflow_hal::Binning::default() {
            return bad(format!(
                "roi {:?} binning {:?}: a UDP stream delivers whole frames of {} x {}",
                c.roi, c.binning, self.sensor.0, self.sensor.1
            ));
        }
        if c.pixel_type != self.pixel_type {
            return bad(format!(
                "dtype {}: the stream is {}",
                c.pixel_type, self.pixel_type
            ));
        }
        if c.trigger_mode == TriggerMode::External {
            return bad("trigger mode External: the sender paces the stream".into());
        }
        self.limit = match c.image_mode {
            ImageMode::Single => Some(1),
            ImageMode::Multiple if c.num_images == 0 => {
                return bad("num_images 0 in Multiple mode".into());
            }
            ImageMode::Multiple => Some(c.num_images.into()),
            ImageMode::Continuous => None,
        };
        self.config = c.clone();
        Ok(self.shape)
    }

    /// Starts a run: stale datagrams are dropped, reception syncs on the next packet 0.
    fn start(&mut self) -> Result<(), UdpError> {
        if self.is_acquiring() {
            return Ok(());
        }
        self.drain_socket();
        self.run = Some(Run::default());
        Ok(())
    }

    fn stop(&mut self) -> Result<(), UdpError> {
        self.run = None;
        Ok(())
    }

    fn is_acquiring(&self) -> bool {
        self.run
            .is_some_and(|r| !r.over || r.pending_lost > 0 || r.pending_flag.is_some())
    }
}

impl UdpReceiver {
    /// Refuse a read outside a run, after its end, or into a buffer smaller than a frame.
    fn check_ready(&mut self, buf_len: usize) -> Result<(), UdpError> {
        match self.run {
            None => return Err(err(ErrorKind::NotAcquiring, "not acquiring")),
            Some(r) if r.over => {
                self.run = None;
                return Err(err(ErrorKind::NotAcquiring, "the run has ended"));
            }
            Some(_) => {}
        }
        let needed = self.shape.bytes();
        if buf_len < needed {
            return Err(err(
                ErrorKind::InvalidConfig,
                format!("buffer of {buf_len} bytes is smaller than one frame of {needed} bytes"),
            ));
        }
        Ok(())
    }

    /// Frame `first_seen` began while `next` was expected: the whole frames between never
    /// arrived. They are reported (one error per frame) before `first_seen`, whose datagram
    /// (`n` bytes) is held for the next read.
    fn missing_before(&mut self, first_seen: u64, next: u64, n: usize) -> UdpError {
        let limit = self.limit;
        let Some(run) = self.run.as_mut() else {
            return err(ErrorKind::NotAcquiring, "not acquiring");
        };
        let left = limit.map_or(u64::MAX, |l| l.saturating_sub(run.accounted));
        let missing = (first_seen - next).min(left);
        run.pending_lost += missing;
        run.lost_id = next;
        run.next_id = Some(first_seen);
        for _ in 0..missing {
            self.account();
        }
        self.held = Some(n);
        self.report_pending()
            .unwrap_or_else(|| err(ErrorKind::FrameLost, "frames never arrived"))
    }
}

impl FrameSource for UdpReceiver {
    /// Receives datagrams until a frame is complete, writing each payload at its place in
    /// `buf`. Lost and incomplete frames are reported one error per frame (module docs).
    fn read_frame(&mut self, buf: &mut [u8], timeout: Duration) -> Result<FrameMeta, UdpError> {
        if let Some(e) = self.report_pending() {
            return Err(e);
        }
        self.check_ready(buf.len())?;
        let needed = self.shape.bytes();
        let deadline = Instant::now() + timeout;
        loop {
            let current = self.run.and_then(|r| r.current);
            let until = match current {
                Some(a) => deadline.min(a.last_packet + FRAME_TIMEOUT),
                None => deadline,
            };
            let Some(n) = self.next_datagram(until)? else {
                let now = Instant::now();
                if current.is_some_and(|a| now >= a.last_packet + FRAME_TIMEOUT) {
                    return self.incomplete(buf);
                }
                if now >= deadline {
                    return Err(err(
                        ErrorKind::Timeout,
                        format!("no frame within {timeout:?}"),
                    ));
                }
                continue;
            };
            let Some(h) = PacketHeader::decode(&self.datagram[..n]) else {
                continue;
            };
            let (at, len) = h.span();
            if h.frame_bytes as usize != needed || n != HEADER_BYTES + len {
                continue;
            }
            let Some(run) = self.run.as_mut() else {
                return Err(err(ErrorKind::NotAcquiring, "not acquiring"));
            };
            let next = match run.next_id {
                Some(id) => id,
                // Sync on the start of a frame.
                None if h.packet_index == 0 => h.frame_id,
                None => continue,
            };
            if h.frame_id < next || current.is_some_and(|a| h.frame_id < a.id) {
                continue;
            }
            if let Some(a) = current
                && h.frame_id > a.id
            {
                // A later frame began: the current one will not complete.
                self.held = Some(n);
                return self.incomplete(buf);
            }
            if current.is_none() {
                if h.frame_id > next {
                    return Err(self.missing_before(h.frame_id, next, n));
                }
                run.next_id = Some(h.frame_id);
                run.current = Some(Assembly {
                    id: h.frame_id,
                    count: h.packet_count,
                    got: 0,
                    last_packet: Instant::now(),
                });
                self.received[..(h.packet_count as usize).div_ceil(64)].fill(0);
            }
            let Some(a) = run.current.as_mut() else {
                continue;
            };
            if h.packet_count != a.count {
                continue;
            }
            a.last_packet = Instant::now();
            let (word, bit) = (h.packet_index as usize / 64, 1u64 << (h.packet_index % 64));
            if self.received[word] & bit != 0 {
                continue;
            }
            self.received[word] |= bit;
            buf[at..at + len].copy_from_slice(&self.datagram[HEADER_BYTES..HEADER_BYTES + len]);
            a.got += 1;
            if a.got == a.count {
                let id = a.id;
                run.current = None;
                run.next_id = Some(id + 1);
                self.account();
                return Ok(self.meta(id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_spans_tile_the_frame() {
        let h = PacketHeader {
            frame_id: 7,
            packet_index: 2,
            packet_count: 3,
            frame_bytes: 10,
        };
        assert_eq!(PacketHeader::decode(&h.encode()), Some(h));
        assert_eq!(&h.encode()[..4], b"DFLW");
        let spans: Vec<_> = (0..3)
            .map(|i| {
                PacketHeader {
                    packet_index: i,
                    ..h
                }
                .span()
            })
            .collect();
        assert_eq!(spans, [(0, 4), (4, 4), (8, 2)]);
        let mut bad = h.encode();
        bad[0] = 0;
        assert_eq!(PacketHeader::decode(&bad), None);
        assert_eq!(
            PacketHeader::decode(
                &PacketHeader {
                    packet_index: 3,
                    ..h
                }
                .encode()
            ),
            None
        );
    }
}
