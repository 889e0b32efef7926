//! The fan's N bound PUSH sockets, one per rank, with what each has been sent. Images go out
//! with DONTWAIT (policy drop: a full rank loses the image, counted) or once the rank can
//! take them (policy block); `start` and `end` go to every rank with a shared deadline. A
//! socket monitor per rank tells whether a consumer is connected, so that the warnings can
//! say why a rank loses images. A rank whose consumer was not there for the `start` gets it
//! late, just before its next image, so a writer that connects late still writes the rest
//! of the series.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use detflow_stream2::fan::{Deal, RankKeys};

use super::Policy;
use super::stop::Stop;

/// At most one warning line per rank in this interval.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// What one rank was sent in the current series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Image messages queued for the rank.
    pub(crate) sent: u64,
    /// Image messages the rank could not take (drop policy), or that a stop interrupted.
    pub(crate) dropped: u64,
    /// Bytes of the image messages sent.
    pub(crate) bytes: u64,
    /// The series' `start` was queued for the rank.
    pub(crate) start_sent: bool,
    /// The series' `end` was queued for the rank.
    pub(crate) end_sent: bool,
}

/// One rank: its socket, its monitor, its counts.
pub(crate) struct Rank {
    /// The rank number, `0..N`.
    pub(crate) number: u64,
    /// The endpoint its PUSH socket listens on (with the port the OS picked for `:0`).
    pub(crate) endpoint: String,
    socket: zmq::Socket,
    /// PAIR socket receiving the PUSH socket's ACCEPTED and DISCONNECTED events.
    monitor: zmq::Socket,
    /// Consumers connected now (accepted minus disconnected).
    peers: u32,
    /// This series' counts; reset at each `start`.
    pub(crate) counts: Counts,
    /// This series' `start` (with the rank keys) when the rank did not take it: sent before
    /// its next image.
    late_start: Option<Vec<u8>>,
    /// When this rank was last named in a warning, and its drop count then.
    warned: Option<(Instant, u64)>,
}

impl Rank {
    fn bind(
        ctx: &zmq::Context,
        number: u64,
        endpoint: &str,
        hwm: i32,
        linger: Duration,
    ) -> anyhow::Result<Self> {
        let socket = ctx
            .socket(zmq::PUSH)
            .context("cannot make a zmq PUSH socket")?;
        socket
            .set_sndhwm(hwm)
            .with_context(|| format!("sndhwm {hwm} refused"))?;
        // Images still queued when the fan exits are delivered for at most this long.
        socket.set_linger(millis(linger))?;
        let monitor_at = format!("inproc://detflow-fan-monitor-{number}");
        let events = zmq::SocketEvent::ACCEPTED as i32 | zmq::SocketEvent::DISCONNECTED as i32;
        socket
            .monitor(&monitor_at, events)
            .context("cannot monitor a rank's PUSH socket")?;
        let monitor = ctx.socket(zmq::PAIR)?;
        monitor.connect(&monitor_at)?;
        socket.bind(endpoint).with_context(|| {
            format!("cannot bind rank {number}'s PUSH socket on {endpoint} (--bind)")
        })?;
        let endpoint = match socket.get_last_endpoint() {
            Ok(Ok(e)) => e,
            _ => endpoint.to_owned(),
        };
        Ok(Rank {
            number,
            endpoint,
            socket,
            monitor,
            peers: 0,
            counts: Counts::default(),
            late_start: None,
            warned: None,
        })
    }

    /// Read the monitor's pending events, logging consumers that come and go.
    fn drain_monitor(&mut self) {
        while let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            // An event is two frames: event number (u16) + value (u32), and the endpoint.
            let event = frames
                .first()
                .and_then(|f| f.get(..2))
                .map(|b| u16::from_ne_bytes([b[0], b[1]]));
            match event {
                Some(e) if e == zmq::SocketEvent::ACCEPTED as u16 => {
                    self.peers += 1;
                    tracing::info!(rank = self.number, endpoint = %self.endpoint, consumers = self.peers, "rank {}: consumer connected", self.number);
                }
                Some(e) if e == zmq::SocketEvent::DISCONNECTED as u16 => {
                    self.peers = self.peers.saturating_sub(1);
                    tracing::warn!(rank = self.number, endpoint = %self.endpoint, consumers = self.peers, "rank {}: consumer disconnected", self.number);
                }
                _ => {}
            }
        }
    }

    /// Send the `start` this rank missed, if it did, before image `image_id`: true when the
    /// rank has its start now (the image may follow), false when it still cannot take one.
    fn catch_up(&mut self, image_id: u64) -> anyhow::Result<bool> {
        let Some(start) = &self.late_start else {
            return Ok(true);
        };
        match self.socket.send(&start[..], zmq::DONTWAIT) {
            Ok(()) => {
                self.late_start = None;
                self.counts.start_sent = true;
                tracing::warn!(rank = self.number, endpoint = %self.endpoint, image_id, "rank {}: start sent late, before image {image_id}: the rank writes the series from there", self.number);
                Ok(true)
            }
            Err(zmq::Error::EAGAIN) => Ok(false),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "cannot send the start to rank {} ({})",
                    self.number, self.endpoint
                )
            }),
        }
    }

    /// Count a lost image and name the rank in a warning, at most once per [`WARN_EVERY`].
    fn note_drop(&mut self, now: Instant) {
        self.counts.dropped += 1;
        self.warn(now, "images dropped");
    }

    /// A warning naming this rank and why it loses (or holds up) images, unless it was
    /// named less than [`WARN_EVERY`] ago.
    fn warn(&mut self, now: Instant, what: &str) {
        if self
            .warned
            .is_some_and(|(t, _)| now.duration_since(t) < WARN_EVERY)
        {
            return;
        }
        self.drain_monitor();
        let before = self.warned.map_or(0, |(_, d)| d);
        let since = self.counts.dropped.saturating_sub(before);
        let why = if self.peers == 0 {
            "no consumer connected"
        } else {
            "fell behind: its queue of --sndhwm images is full"
        };
        tracing::warn!(
            rank = self.number,
            endpoint = %self.endpoint,
            dropped = since,
            dropped_in_series = self.counts.dropped,
            "rank {}: {what}, {why}",
            self.number
        );
        self.warned = Some((now, self.counts.dropped));
    }
}

/// Every rank of the fan.
pub(crate) struct Ranks {
    pub(crate) ranks: Vec<Rank>,
    deal: Deal,
    policy: Policy,
    send_timeout: Duration,
}

/// What sending an image did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Queued for the rank, or dropped and counted: go on.
    Done,
    /// A stop was asked for while the image waited for its rank (policy block).
    Stopped,
}

impl Ranks {
    /// Bind one PUSH socket per endpoint (rank k on `endpoints[k]`).
    pub(crate) fn bind(
        ctx: &zmq::Context,
        endpoints: &[String],
        deal: Deal,
        policy: Policy,
        sndhwm: i32,
        send_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let ranks = endpoints
            .iter()
            .zip(0..)
            .map(|(e, k)| Rank::bind(ctx, k, e, sndhwm, send_timeout))
            .collect::<anyhow::Result<_>>()?;
        Ok(Ranks {
            ranks,
            deal,
            policy,
            send_timeout,
        })
    }

    /// How images are dealt.
    pub(crate) fn deal(&self) -> Deal {
        self.deal
    }

    /// The monitors, to wait on beside the detector's socket.
    pub(crate) fn monitor_items(&self) -> impl Iterator<Item = zmq::PollItem<'_>> {
        self.ranks
            .iter()
            .map(|r| r.monitor.as_poll_item(zmq::POLLIN))
    }

    /// Log the consumers that came and went.
    pub(crate) fn drain_monitors(&mut self) {
        self.ranks.iter_mut().for_each(Rank::drain_monitor);
    }

    /// Forget the last series' counts (at a `start`).
    pub(crate) fn reset_counts(&mut self) {
        for r in &mut self.ranks {
            r.counts = Counts::default();
            r.late_start = None;
            r.warned = None;
        }
    }

    /// Send image `image_id` (the message as received) to its rank by the deal.
    pub(crate) fn send_image(
        &mut self,
        image_id: u64,
        msg: zmq::Message,
        stop: &Stop,
    ) -> anyhow::Result<Sent> {
        let k = self.deal.rank_of(image_id) as usize;
        let rank = &mut self.ranks[k];
        let len = msg.len() as u64;
        if self.policy == Policy::Block && !wait_writable(rank, stop)? {
            rank.counts.dropped += 1;
            return Ok(Sent::Stopped);
        }
        if !rank.catch_up(image_id)? {
            // No consumer for the start either: the image is lost with it (drop policy).
            rank.note_drop(Instant::now());
            return Ok(Sent::Done);
        }
        // Moves the message into libzmq (no copy); on EAGAIN libzmq has not taken it and it
        // is freed here: the image is lost, as the drop policy says.
        match rank.socket.send(msg, zmq::DONTWAIT) {
            Ok(()) => {
                rank.counts.sent += 1;
                rank.counts.bytes += len;
            }
            Err(zmq::Error::EAGAIN) => rank.note_drop(Instant::now()),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot send an image to rank {k} ({})", rank.endpoint)
                });
            }
        }
        Ok(Sent::Done)
    }

    /// Send `msg` (a `start` or `end` as received, `what` names it) to every rank with its
    /// [`RankKeys`] added, waiting at most the send timeout for the ranks together. A rank
    /// with no consumer connected is not waited for. A rank not reached is logged naming it:
    /// a `start` it missed goes to it before its next image (a warning), an `end` is lost (an
    /// error, unless the rank was sent its whole share of the series' `number_of_images`: its
    /// writer then stops on its own, and is gone), and a rank that never got the start is not
    /// sent the end. A `stop` request ends the wait early. Returns false (logged) when the
    /// keys cannot be added.
    pub(crate) fn send_to_all(
        &mut self,
        what: &str,
        msg: &[u8],
        stop: Option<&Stop>,
        number_of_images: Option<u64>,
    ) -> anyhow::Result<bool> {
        self.drain_monitors();
        let mut pending = Vec::new();
        for rank in &self.ranks {
            let keys = RankKeys::new(rank.number, self.deal).expect("ranks are numbered below N");
            let mut out = Vec::new();
            if let Err(e) = keys.add_to(msg, &mut out) {
                tracing::error!("the {what} message is not forwarded: {e}");
                return Ok(false);
            }
            pending.push((rank.number as usize, out));
        }
        let deadline = Instant::now() + self.send_timeout;
        let start = what == "start";
        let mut missed = Vec::new();
        pending.retain_mut(|(k, out)| {
            let rank = &mut self.ranks[*k];
            if !start && rank.late_start.take().is_some() {
                tracing::error!(rank = k, endpoint = %rank.endpoint, "rank {k}: no {what} sent: no consumer took this series' start");
                return false;
            }
            if rank.peers == 0 {
                missed.push((*k, std::mem::take(out), "no consumer connected".to_owned()));
            }
            rank.peers > 0
        });
        while !pending.is_empty() {
            pending.retain(|(k, out)| !self.try_send(*k, what, out));
            if pending.is_empty() || stop.is_some_and(Stop::requested) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut items: Vec<_> = pending
                .iter()
                .map(|(k, _)| self.ranks[*k].socket.as_poll_item(zmq::POLLOUT))
                .chain(stop.map(Stop::poll_item))
                .collect();
            poll(&mut items, Some(left))?;
        }
        let slow = format!(
            "its consumer did not take it within {:.1} s (--send-timeout)",
            self.send_timeout.as_secs_f64()
        );
        missed.extend(pending.into_iter().map(|(k, out)| (k, out, slow.clone())));
        for (k, out, why) in missed {
            let rank = &mut self.ranks[k];
            let share = number_of_images.map(|n| self.deal.images_of_rank(k as u64, n));
            if start {
                tracing::warn!(rank = k, endpoint = %rank.endpoint, "rank {k}: the start message was not sent now: {why}; it goes to the rank before its next image");
                rank.late_start = Some(out);
            } else if share == Some(rank.counts.sent) && rank.peers == 0 {
                tracing::info!(rank = k, endpoint = %rank.endpoint, "rank {k}: no {what} sent: its writer took all {} images of its share and left", rank.counts.sent);
            } else {
                tracing::error!(rank = k, endpoint = %rank.endpoint, "rank {k}: the {what} message was not sent: {why}");
            }
        }
        Ok(true)
    }

    /// One DONTWAIT send of `start` or `end` to rank `k`: true when it was queued.
    fn try_send(&mut self, k: usize, what: &str, out: &[u8]) -> bool {
        let rank = &mut self.ranks[k];
        match rank.socket.send(out, zmq::DONTWAIT) {
            Ok(()) => {
                match what {
                    "start" => rank.counts.start_sent = true,
                    _ => rank.counts.end_sent = true,
                }
                true
            }
            Err(zmq::Error::EAGAIN) => false,
            Err(e) => {
                tracing::error!(rank = k, endpoint = %rank.endpoint, "rank {k}: the {what} message was not sent: {e}");
                true
            }
        }
    }
}

/// Policy block: wait until `rank` can take a message, naming it in a warning each second it
/// holds the fan up. False when a stop was asked for meanwhile.
fn wait_writable(rank: &mut Rank, stop: &Stop) -> anyhow::Result<bool> {
    loop {
        // ZMQ_EVENTS: no system call, and a single thread sends, so POLLOUT stays true
        // until the send.
        if rank.socket.get_events()?.contains(zmq::POLLOUT) {
            return Ok(true);
        }
        if stop.requested() {
            return Ok(false);
        }
        let mut items = [rank.socket.as_poll_item(zmq::POLLOUT), stop.poll_item()];
        if poll(&mut items, Some(WARN_EVERY))? == 0 {
            rank.warn(Instant::now(), "the fan waits for it (--policy block)");
        }
    }
}

/// zmq_poll for at most `timeout` (None: until something is ready); a signal's EINTR
/// counts as "nothing ready".
pub(crate) fn poll(
    items: &mut [zmq::PollItem<'_>],
    timeout: Option<Duration>,
) -> anyhow::Result<i32> {
    match zmq::poll(items, timeout.map_or(-1, |t| i64::from(millis(t)))) {
        Ok(n) => Ok(n),
        Err(zmq::Error::EINTR) => Ok(0),
        Err(e) => Err(e).context("zmq_poll"),
    }
}

/// A duration as zmq's milliseconds (at most i32::MAX).
pub(crate) fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}
