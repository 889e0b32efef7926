//! One TCP virtual circuit (one client process): a reader thread that frames and executes
//! requests, and a writer thread that sends replies and monitor updates.
//!
//! Replies to requests queue in an outbox bounded in bytes (when it is full the reader stops
//! reading, so a client that never reads its replies is throttled by TCP). Monitor updates
//! never queue as bytes: each subscription holds a short queue of snapshots, and the outbox
//! holds at most one reference per subscription. A client that stays unwritable for the
//! send timeout is disconnected; posters are never blocked by it.
//!
//! Order on a circuit: replies and subscription references share one queue, sent in the
//! order they were queued. An update posted before a reply is queued (for example the
//! monitor update a put causes, posted before the put's WRITE_NOTIFY reply) is therefore
//! sent before that reply (see the crate README, "Ordering"), unless the client turned
//! events off (EVENTS_OFF).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::dbr::{self, DbrRequest, PutTarget, PutValue};
use crate::proto::{self, Eca, FrameError, Header, Parsed, cmd};
use crate::pv::{
    self, CompletionInner, FieldView, Pv, PvHandle, Subscription, WriteReply, WriteRequest, dbe,
    lock,
};
use crate::server::ServerShared;

/// Reply bytes queued before the reader stops reading requests.
const REPLY_LIMIT: usize = 4 << 20;
/// Small replies are appended to the last outbox chunk while it is below this size.
const CHUNK_MERGE: usize = 64 << 10;
/// The writer sends its buffer once it holds this many bytes of updates.
const WRITE_BATCH: usize = 256 << 10;

/// One thing for the writer to send, in queue order.
enum Entry {
    /// Reply bytes (small replies are merged into one entry).
    Reply(Vec<u8>),
    /// A subscription with snapshots waiting in its slot: they are encoded when the writer
    /// reaches this entry, so an update is sent before every reply queued after it.
    Updates(Arc<Subscription>),
}

struct Outbox {
    /// Replies and subscriptions with updates, in the order they were queued. A
    /// subscription appears at most once (its `queued` flag) in `queue` and `held`
    /// together.
    queue: VecDeque<Entry>,
    /// Reply bytes in `queue`.
    bytes: usize,
    /// Subscriptions with updates waiting while events are off (EVENTS_OFF).
    held: VecDeque<Arc<Subscription>>,
    /// False after EVENTS_OFF: updates wait in `held` (collapsed to the newest at
    /// EVENTS_ON) until EVENTS_ON.
    events_on: bool,
    /// The circuit is closing: the writer flushes the replies and shuts the socket.
    closing: bool,
}

/// A channel created on this circuit.
struct Channel {
    cid: u32,
    pv: Arc<Pv>,
    view: FieldView,
    subs: HashMap<u32, Arc<Subscription>>,
}

/// The parts of a circuit that posters, completions and the server reach.
pub(crate) struct CircuitShared {
    out: Mutex<Outbox>,
    /// Wakes the writer.
    wake_writer: Condvar,
    /// Wakes a reader waiting for outbox space.
    space: Condvar,
    channels: Mutex<HashMap<u32, Channel>>,
    stream: TcpStream,
    pub peer: SocketAddr,
    closed: AtomicBool,
}

impl CircuitShared {
    /// Append a small reply built by `f`.
    pub(crate) fn push_reply(&self, f: impl FnOnce(&mut Vec<u8>)) {
        let mut out = lock(&self.out);
        if out.closing {
            return;
        }
        if !matches!(out.queue.back(), Some(Entry::Reply(c)) if c.len() < CHUNK_MERGE) {
            out.queue.push_back(Entry::Reply(Vec::with_capacity(1024)));
        }
        let Some(Entry::Reply(chunk)) = out.queue.back_mut() else {
            unreachable!("a reply entry was just ensured")
        };
        let before = chunk.len();
        f(chunk);
        let added = chunk.len() - before;
        out.bytes += added;
        self.wake_writer.notify_one();
    }

    /// Queue an already encoded reply (a large read).
    fn push_owned(&self, bytes: Vec<u8>) {
        if bytes.len() < CHUNK_MERGE {
            self.push_reply(|out| out.extend_from_slice(&bytes));
            return;
        }
        let mut out = lock(&self.out);
        if out.closing {
            return;
        }
        out.bytes += bytes.len();
        out.queue.push_back(Entry::Reply(bytes));
        self.wake_writer.notify_one();
    }

    /// Put a subscription with a fresh slot in the writer's queue, after every reply queued
    /// so far (or aside, while events are off).
    pub(crate) fn push_dirty(&self, sub: Arc<Subscription>) {
        let mut out = lock(&self.out);
        if out.closing {
            return;
        }
        if out.events_on {
            out.queue.push_back(Entry::Updates(sub));
            self.wake_writer.notify_one();
        } else {
            out.held.push_back(sub);
        }
    }

    pub(crate) fn has_channel(&self, sid: u32) -> bool {
        lock(&self.channels).contains_key(&sid)
    }

    /// Queue SERVER_DISCONN for every channel (server shutdown), then close.
    pub(crate) fn disconnect_all(&self) {
        let cids: Vec<u32> = lock(&self.channels).values().map(|c| c.cid).collect();
        self.push_reply(|out| {
            for cid in cids {
                Header::new(cmd::SERVER_DISCONN, 0, 0, cid, 0).write_to(out);
            }
        });
        self.close();
    }

    /// Send SERVER_DISCONN for one channel and forget it (its PV was removed).
    pub(crate) fn disconnect_channel(self: &Arc<Self>, sid: u32) {
        let removed = lock(&self.channels).remove(&sid);
        if let Some(ch) = removed {
            for sub in ch.subs.values() {
                sub.cancelled.store(true, Ordering::Release);
            }
            self.push_reply(|out| Header::new(cmd::SERVER_DISCONN, 0, 0, ch.cid, 0).write_to(out));
        }
    }

    /// Start closing: the writer flushes what is queued, then shuts the socket.
    pub(crate) fn close(&self) {
        let mut out = lock(&self.out);
        out.closing = true;
        self.wake_writer.notify_all();
        self.space.notify_all();
    }

    /// Whether the circuit has finished (both threads done with the socket).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Number of live subscriptions.
    pub(crate) fn subscription_count(&self) -> usize {
        lock(&self.channels).values().map(|c| c.subs.len()).sum()
    }
}

/// Start a circuit's two threads for an accepted connection.
pub(crate) fn spawn(
    server: Arc<ServerShared>,
    stream: TcpStream,
    peer: SocketAddr,
) -> io::Result<(Arc<CircuitShared>, Vec<std::thread::JoinHandle<()>>)> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(server.config.send_timeout))?;
    let shared = Arc::new(CircuitShared {
        out: Mutex::new(Outbox {
            queue: VecDeque::new(),
            bytes: 0,
            held: VecDeque::new(),
            events_on: true,
            closing: false,
        }),
        wake_writer: Condvar::new(),
        space: Condvar::new(),
        channels: Mutex::new(HashMap::new()),
        stream: stream.try_clone()?,
        peer,
        closed: AtomicBool::new(false),
    });
    // rsrv sends its VERSION right after accept (spec §1.5).
    shared.push_reply(|out| {
        Header::new(cmd::VERSION, 0, u32::from(proto::MINOR_VERSION), 0, 0).write_to(out)
    });
    let writer_stream = stream.try_clone()?;
    let w = shared.clone();
    let writer = std::thread::Builder::new()
        .name(format!("ca-wr-{peer}"))
        .stack_size(128 << 10)
        .spawn(move || run_writer(&w, writer_stream))?;
    let r = shared.clone();
    let reader = std::thread::Builder::new()
        .name(format!("ca-rd-{peer}"))
        .stack_size(256 << 10)
        .spawn(move || {
            let mut reader = Reader {
                shared: r,
                server,
                minor: proto::MINOR_VERSION,
                host: String::new(),
                user: String::new(),
            };
            reader.run(stream);
            reader.cleanup();
        })?;
    Ok((shared, vec![reader, writer]))
}

fn run_writer(c: &Arc<CircuitShared>, mut stream: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let result = (|| -> io::Result<()> {
        loop {
            let entries = {
                let mut out = lock(&c.out);
                while out.queue.is_empty() {
                    if out.closing {
                        return Ok(());
                    }
                    out = c.wake_writer.wait(out).unwrap_or_else(|e| e.into_inner());
                }
                out.bytes = 0;
                c.space.notify_all();
                std::mem::take(&mut out.queue)
            };
            // In queue order: an update queued before a reply goes out before it.
            for entry in entries {
                match entry {
                    Entry::Reply(bytes) => {
                        if buf.len() + bytes.len() > WRITE_BATCH {
                            stream.write_all(&buf)?;
                            buf.clear();
                        }
                        if bytes.len() >= WRITE_BATCH {
                            stream.write_all(&bytes)?;
                        } else {
                            buf.extend_from_slice(&bytes);
                        }
                    }
                    Entry::Updates(sub) => {
                        encode_updates(&sub, &mut buf);
                        if buf.len() >= WRITE_BATCH {
                            stream.write_all(&buf)?;
                            buf.clear();
                        }
                    }
                }
            }
            if !buf.is_empty() {
                stream.write_all(&buf)?;
                buf.clear();
            }
            if buf.capacity() > (4 << 20) {
                buf = Vec::with_capacity(16 << 10);
            }
        }
    })();
    let _ = stream.flush();
    if result.is_err() {
        // Unwritable for the send timeout, or the peer is gone: drop the circuit. The reader
        // sees the shutdown and cleans up.
        c.close();
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Encode the updates waiting in `sub`'s slot into `out`.
fn encode_updates(sub: &Arc<Subscription>, out: &mut Vec<u8>) {
    // Clear `queued` before taking the slot (pairs with Subscription::offer): a snapshot
    // offered after the take queues the subscription again, behind what is queued now.
    sub.queued.store(false, Ordering::SeqCst);
    if sub.cancelled.load(Ordering::Acquire) {
        return;
    }
    let snaps = std::mem::take(&mut *lock(&sub.slot));
    if snaps.is_empty() {
        return;
    }
    let readable = {
        let st = sub.pv.state();
        sub.pv.access_for(st.access, sub.view).can_read()
    };
    for snap in &snaps {
        pv::encode_reply(
            out,
            cmd::EVENT_ADD,
            sub.data_type,
            sub.count,
            Eca::Normal.code(),
            sub.subid,
            &sub.pv,
            sub.view,
            snap,
            readable,
        );
    }
}

/// Why a circuit is closed by the server.
#[derive(Debug)]
enum Close {
    Protocol(String),
}

struct Reader {
    shared: Arc<CircuitShared>,
    server: Arc<ServerShared>,
    /// The client's minor protocol version.
    minor: u16,
    host: String,
    user: String,
}

impl Reader {
    fn run(&mut self, mut stream: TcpStream) {
        let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
        let mut start = 0usize;
        // Bytes of an over-limit payload still to be discarded.
        let mut skip = 0usize;
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            loop {
                if skip > 0 {
                    let n = skip.min(buf.len() - start);
                    start += n;
                    skip -= n;
                    if skip > 0 {
                        break;
                    }
                }
                let (header, len) = match proto::parse_header(&buf[start..]) {
                    Ok(Parsed::NeedMore) => break,
                    Ok(Parsed::Header { header, len }) => (header, len),
                    Err(e @ FrameError::Misaligned { .. }) => {
                        self.log_close(&Close::Protocol(e.to_string()));
                        return;
                    }
                };
                let size = header.payload_size as usize;
                if size > self.server.config.max_payload {
                    // Answer without reading the payload into memory (spec §6.6).
                    self.error(
                        &header,
                        0xFFFF_FFFF,
                        Eca::TooLarge,
                        "payload over the server's limit",
                    );
                    start += len;
                    skip = size;
                    continue;
                }
                if buf.len() - start < len + size {
                    buf.reserve(len + size - (buf.len() - start));
                    break;
                }
                if !self.wait_for_space() {
                    return;
                }
                let payload_at = start + len;
                let result = self.handle(header, &buf[payload_at..payload_at + size]);
                start = payload_at + size;
                if let Err(close) = result {
                    self.log_close(&close);
                    return;
                }
            }
            if start > 0 {
                buf.drain(..start);
                start = 0;
            }
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn log_close(&self, why: &Close) {
        if self.server.config.log {
            let Close::Protocol(text) = why;
            eprintln!(
                "detflow-ca: closing circuit from {}: {text}",
                self.shared.peer
            );
        }
    }

    /// Wait while the outbox is over its limit; false when the circuit is closing.
    fn wait_for_space(&self) -> bool {
        let mut out = lock(&self.shared.out);
        while out.bytes > REPLY_LIMIT && !out.closing {
            out = self
                .shared
                .space
                .wait(out)
                .unwrap_or_else(|e| e.into_inner());
        }
        !out.closing
    }

    /// Drop every channel and subscription, and wait for the writer to finish.
    fn cleanup(&mut self) {
        self.shared.close();
        let channels: Vec<(u32, Channel)> = lock(&self.shared.channels).drain().collect();
        let weak = Arc::downgrade(&self.shared);
        for (sid, ch) in channels {
            for sub in ch.subs.values() {
                sub.cancelled.store(true, Ordering::Release);
                ch.pv.detach_sub(sub);
            }
            ch.pv.detach_channel(&weak, sid);
        }
        let _ = self.shared.stream.shutdown(Shutdown::Read);
        self.shared.closed.store(true, Ordering::Release);
    }

    fn error(&self, request: &Header, cid: u32, eca: Eca, context: &str) {
        self.shared
            .push_reply(|out| proto::error_message(out, request, cid, eca, context));
    }

    fn channel<T>(&self, sid: u32, f: impl FnOnce(&mut Channel) -> T) -> Option<T> {
        lock(&self.shared.channels).get_mut(&sid).map(f)
    }

    fn handle(&mut self, h: Header, payload: &[u8]) -> Result<(), Close> {
        if self.server.config.trace {
            eprintln!("detflow-ca: {} -> {h:?}", self.shared.peer);
        }
        match h.command {
            cmd::VERSION => {
                if h.count != 0 {
                    self.minor = h.count.min(u32::from(u16::MAX)) as u16;
                }
            }
            cmd::CLIENT_NAME => {
                self.user = String::from_utf8_lossy(proto::payload_str(payload)).into_owned()
            }
            cmd::HOST_NAME => {
                self.host = String::from_utf8_lossy(proto::payload_str(payload)).into_owned()
            }
            cmd::CREATE_CHAN => self.create_channel(h, payload),
            cmd::READ_NOTIFY | cmd::READ => self.read(h),
            cmd::WRITE | cmd::WRITE_NOTIFY => self.write(h, payload),
            cmd::EVENT_ADD => self.event_add(h, payload),
            cmd::EVENT_CANCEL => self.event_cancel(h),
            cmd::EVENTS_OFF => {
                let mut out = lock(&self.shared.out);
                out.events_on = false;
                // Updates not yet taken by the writer wait for EVENTS_ON.
                let queue = std::mem::take(&mut out.queue);
                for entry in queue {
                    match entry {
                        Entry::Updates(sub) => out.held.push_back(sub),
                        reply => out.queue.push_back(reply),
                    }
                }
            }
            cmd::EVENTS_ON => {
                let mut out = lock(&self.shared.out);
                out.events_on = true;
                // Flow control: what queued while events were off collapses to the newest
                // value of each subscription (as rsrv does).
                let held = std::mem::take(&mut out.held);
                for sub in held {
                    {
                        let mut q = lock(&sub.slot);
                        let excess = q.len().saturating_sub(1);
                        q.drain(..excess);
                    }
                    out.queue.push_back(Entry::Updates(sub));
                }
                drop(out);
                self.shared.wake_writer.notify_one();
            }
            cmd::READ_SYNC => self.shared.push_reply(|out| {
                Header {
                    payload_size: 0,
                    ..h
                }
                .write_to(out)
            }),
            cmd::ECHO => self.shared.push_reply(|out| {
                let mut e = h;
                e.payload_size = 0;
                proto::push_message(out, e, payload)
            }),
            cmd::CLEAR_CHANNEL => self.clear_channel(h),
            cmd::SEARCH => self.tcp_search(h, payload),
            other => {
                self.error(&h, 0xFFFF_FFFF, Eca::Internal, "unknown command");
                return Err(Close::Protocol(format!("unknown command {other}")));
            }
        }
        Ok(())
    }

    fn tcp_search(&self, h: Header, payload: &[u8]) {
        let name = proto::payload_str(payload);
        if self.server.pvs.resolve(name).is_some() {
            let port = self.server.tcp_port;
            self.shared.push_reply(|out| {
                proto::push_message(
                    out,
                    Header::new(cmd::SEARCH, port, 0, 0xFFFF_FFFF, h.param1),
                    &proto::MINOR_VERSION.to_be_bytes(),
                )
            });
        } else if h.data_type == proto::DO_REPLY {
            self.shared.push_reply(|out| {
                Header::new(cmd::NOT_FOUND, h.data_type, h.count, h.param1, h.param2).write_to(out)
            });
        }
    }

    fn create_channel(&mut self, h: Header, payload: &[u8]) {
        let cid = h.param1;
        if h.param2 != 0 {
            self.minor = h.param2.min(u32::from(u16::MAX)) as u16;
        }
        let name = proto::payload_str(payload);
        let Some((pv, view)) = self.server.pvs.resolve(name) else {
            self.shared
                .push_reply(|out| Header::new(cmd::CREATE_CH_FAIL, 0, 0, cid, 0).write_to(out));
            return;
        };
        let sid = {
            let mut channels = lock(&self.shared.channels);
            let sid = loop {
                let s = self.server.next_sid.fetch_add(1, Ordering::Relaxed);
                if !channels.contains_key(&s) {
                    break s;
                }
            };
            channels.insert(
                sid,
                Channel {
                    cid,
                    pv: pv.clone(),
                    view,
                    subs: HashMap::new(),
                },
            );
            sid
        };
        let (ty, mut count) = view.native(&pv);
        if self.minor < 9 {
            count = count.min(0xFFFE);
        }
        // Under the PV lock, so a concurrent set_access cannot overtake these rights.
        let mut st = pv.state();
        if st.removed {
            drop(st);
            lock(&self.shared.channels).remove(&sid);
            self.shared
                .push_reply(|out| Header::new(cmd::CREATE_CH_FAIL, 0, 0, cid, 0).write_to(out));
            return;
        }
        st.channels.push(pv::ChannelLink {
            circuit: Arc::downgrade(&self.shared),
            cid,
            sid,
            view,
        });
        let bits = pv.access_for(st.access, view).bits();
        self.shared.push_reply(|out| {
            Header::new(cmd::ACCESS_RIGHTS, 0, 0, cid, bits).write_to(out);
            Header::new(cmd::CREATE_CHAN, ty.id(), count as u32, cid, sid).write_to(out);
        });
    }

    /// The channel's PV, view and cid, or an ERROR(ECA_BADCHID) sent.
    fn lookup(&self, h: &Header) -> Option<(Arc<Pv>, FieldView, u32)> {
        let found = self.channel(h.param1, |ch| (ch.pv.clone(), ch.view, ch.cid));
        if found.is_none() {
            if self.server.config.log {
                eprintln!(
                    "detflow-ca: {} used unknown sid {} (command {})",
                    self.shared.peer, h.param1, h.command
                );
            }
            self.error(h, 0xFFFF_FFFF, Eca::BadChid, "unknown channel");
        }
        found
    }

    fn read(&self, h: Header) {
        let Some((pv, view, cid)) = self.lookup(&h) else {
            return;
        };
        let (snap, readable) = {
            let st = pv.state();
            (st.snap.clone(), pv.access_for(st.access, view).can_read())
        };
        let param1 = if h.command == cmd::READ {
            cid
        } else {
            Eca::Normal.code()
        };
        let mut out = Vec::new();
        pv::encode_reply(
            &mut out,
            h.command,
            h.data_type,
            h.count,
            param1,
            h.param2,
            &pv,
            view,
            &snap,
            readable,
        );
        self.shared.push_owned(out);
    }

    fn write(&self, h: Header, payload: &[u8]) {
        let Some((pv, view, cid)) = self.lookup(&h) else {
            return;
        };
        let notify = h.command == cmd::WRITE_NOTIFY;
        let fail = |eca: Eca| {
            if notify {
                self.shared.push_reply(|out| {
                    Header::new(
                        cmd::WRITE_NOTIFY,
                        h.data_type,
                        h.count,
                        eca.code(),
                        h.param2,
                    )
                    .write_to(out)
                });
            } else {
                self.error(&h, cid, eca, &pv.name);
            }
        };
        let (access, meta) = {
            let st = pv.state();
            (st.access, st.snap.meta.clone())
        };
        if !pv.access_for(access, view).can_write() {
            return fail(Eca::NoWtAccess);
        }
        let target = PutTarget {
            native: pv.native,
            max_count: pv.count,
            text: pv.text,
            meta: &meta,
        };
        let value = match dbr::decode_put(h.data_type, h.count, payload, &target) {
            Ok(PutValue::Value(v)) => v,
            Ok(PutValue::Ignored) => {
                if notify {
                    fail(Eca::Normal);
                }
                return;
            }
            Err(eca) => return fail(eca),
        };
        let inner = notify.then(|| {
            Arc::new(CompletionInner {
                circuit: Arc::downgrade(&self.shared),
                sid: h.param1,
                request: h,
                done: AtomicBool::new(false),
                held: Mutex::new(Some(None)),
            })
        });
        let reply = match pv.callback() {
            Some(cb) => {
                let request = WriteRequest {
                    pv: PvHandle { pv: pv.clone() },
                    value: value.clone(),
                    notify: inner.clone(),
                    host: self.host.clone(),
                    user: self.user.clone(),
                };
                // A panicking callback must not take the circuit down: refuse the write.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&request)))
                    .unwrap_or(WriteReply::Reject(Eca::PutFail))
            }
            None => WriteReply::Accept,
        };
        match reply {
            WriteReply::Accept => {
                pv.store(value);
                if let Some(i) = &inner {
                    i.finish(Eca::Normal);
                }
            }
            WriteReply::Reject(eca) => match &inner {
                Some(i) => i.finish(eca),
                None => self.error(&h, cid, eca, &pv.name),
            },
            WriteReply::Pending(completion) => {
                pv.store(value);
                // The server's references go; the daemon's clone finishes the reply.
                drop(completion);
            }
        }
        // The value is stored and its monitor updates queued: a reply finished meanwhile
        // (by another thread) goes out now, after them.
        if let Some(i) = &inner {
            i.release();
        }
    }

    fn event_add(&self, h: Header, payload: &[u8]) {
        let Some((pv, view, cid)) = self.lookup(&h) else {
            return;
        };
        if !matches!(
            DbrRequest::from_id(h.data_type),
            Some(DbrRequest::Dbr(_) | DbrRequest::StsAckString | DbrRequest::ClassName)
        ) {
            return self.error(&h, cid, Eca::BadType, &pv.name);
        }
        let mut mask = if payload.len() >= 14 {
            u16::from_be_bytes([payload[12], payload[13]])
        } else {
            0
        };
        if mask == 0 {
            mask = dbe::VALUE | dbe::LOG | dbe::ALARM;
        }
        let (native_type, native_count) = view.native(&pv);
        let count = h.count.min(native_count as u32);
        let elements = if count == 0 {
            native_count
        } else {
            count as usize
        };
        let sub_bytes = elements * native_type.element_size();
        let sub = Arc::new(Subscription {
            circuit: Arc::downgrade(&self.shared),
            subid: h.param2,
            data_type: h.data_type,
            count,
            mask,
            view,
            pv: pv.clone(),
            slot: Mutex::new(std::collections::VecDeque::new()),
            depth: if sub_bytes <= pv::SMALL_VALUE_BYTES {
                pv::SMALL_QUEUE
            } else {
                1
            },
            queued: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
        });
        let replaced = self.channel(h.param1, |ch| ch.subs.insert(h.param2, sub.clone()));
        if let Some(Some(old)) = replaced {
            old.cancelled.store(true, Ordering::Release);
            pv.detach_sub(&old);
        }
        // The first update goes out at once with the current value (spec §3.7).
        let mut st = pv.state();
        st.subs.push(sub.clone());
        let snap = st.snap.clone();
        lock(&sub.slot).push_back(snap);
        sub.queued.store(true, Ordering::SeqCst);
        self.shared.push_dirty(sub);
    }

    fn event_cancel(&self, h: Header) {
        let found = self.channel(h.param1, |ch| (ch.subs.remove(&h.param2), ch.cid));
        match found {
            Some((Some(sub), _)) => {
                sub.cancelled.store(true, Ordering::Release);
                sub.pv.detach_sub(&sub);
                let (ty, count) = (sub.data_type, sub.count);
                self.shared.push_reply(|out| {
                    Header::new(cmd::EVENT_ADD, ty, count, h.param1, h.param2).write_to(out)
                });
            }
            Some((None, cid)) => self.error(&h, cid, Eca::BadMonId, "unknown subscription"),
            None => self.error(&h, 0xFFFF_FFFF, Eca::BadChid, "unknown channel"),
        }
    }

    fn clear_channel(&self, h: Header) {
        let removed = lock(&self.shared.channels).remove(&h.param1);
        let Some(ch) = removed else {
            return self.error(&h, 0xFFFF_FFFF, Eca::BadChid, "unknown channel");
        };
        for sub in ch.subs.values() {
            sub.cancelled.store(true, Ordering::Release);
            ch.pv.detach_sub(sub);
        }
        ch.pv
            .detach_channel(&Arc::downgrade(&self.shared), h.param1);
        self.shared.push_reply(|out| {
            Header::new(cmd::CLEAR_CHANNEL, 0, 0, h.param1, h.param2).write_to(out)
        });
    }
}
