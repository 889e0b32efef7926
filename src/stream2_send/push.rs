//! The PUSH socket `stream2-send` binds, used as the spec says a DCU uses it (§1): images
//! sent with DONTWAIT and dropped (counted) when no consumer can take them, `start` held
//! back until a consumer connects (a socket monitor's ACCEPTED event) or a deadline passes,
//! `start` and `end` sent blocking with a timeout so that neither is lost silently.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Events of the socket monitor, read on a PAIR socket.
pub(crate) struct Push {
    socket: zmq::Socket,
    monitor: zmq::Socket,
    /// The endpoint bound (with the port the OS picked for `:0`... or the one given).
    pub(crate) endpoint: String,
    send_timeout: Duration,
}

/// What an image send did.
pub(crate) enum Sent {
    /// Queued for a consumer.
    Queued,
    /// No consumer could take it (every pipe at its high-water mark, or none): dropped.
    Dropped,
}

impl Push {
    /// Bind a PUSH socket on `endpoint` with `sndhwm`, watching for consumers.
    pub(crate) fn bind(
        endpoint: &str,
        sndhwm: i32,
        send_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let ctx = zmq::Context::new();
        let socket = ctx
            .socket(zmq::PUSH)
            .context("cannot make a zmq PUSH socket")?;
        socket
            .set_sndhwm(sndhwm)
            .with_context(|| format!("sndhwm {sndhwm} refused"))?;
        // Messages still queued at close are delivered for at most this long.
        socket.set_linger(millis(send_timeout))?;
        // One monitor per socket: the address only has to be unique in this context.
        let monitor_at = format!(
            "inproc://detflow-stream2-send-monitor-{}",
            std::process::id()
        );
        socket
            .monitor(&monitor_at, zmq::SocketEvent::ACCEPTED as i32)
            .context("cannot monitor the PUSH socket")?;
        let monitor = ctx.socket(zmq::PAIR)?;
        monitor.connect(&monitor_at)?;
        socket
            .bind(endpoint)
            .with_context(|| format!("cannot bind the PUSH socket on {endpoint} (--bind)"))?;
        let endpoint = match socket.get_last_endpoint() {
            Ok(Ok(e)) => e,
            _ => endpoint.to_owned(),
        };
        Ok(Push {
            socket,
            monitor,
            endpoint,
            send_timeout,
        })
    }

    /// Wait until a consumer connects, at most `wait`; false when nobody did. `stopped` is
    /// checked when a signal interrupts the wait.
    pub(crate) fn wait_for_consumer(
        &self,
        wait: Duration,
        stopped: &dyn Fn() -> bool,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.monitor.poll(zmq::POLLIN, millis(left).into()) {
                Ok(0) => return Ok(false),
                Ok(_) => {
                    // A monitor event is two frames: event number (u16) + value (u32), and
                    // the endpoint.
                    let frames = self.monitor.recv_multipart(0)?;
                    let event = frames
                        .first()
                        .and_then(|f| f.get(..2))
                        .map(|b| u16::from_ne_bytes([b[0], b[1]]));
                    if event == Some(zmq::SocketEvent::ACCEPTED as u16) {
                        return Ok(true);
                    }
                }
                Err(zmq::Error::EINTR) if stopped() => return Ok(false),
                Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e).context("waiting for a consumer"),
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// Send an image without waiting.
    pub(crate) fn send_image(&self, msg: &[u8]) -> anyhow::Result<Sent> {
        match self.socket.send(msg, zmq::DONTWAIT) {
            Ok(()) => Ok(Sent::Queued),
            Err(zmq::Error::EAGAIN) => Ok(Sent::Dropped),
            Err(e) => Err(e).context("cannot send an image message"),
        }
    }

    /// Send `start` or `end`, waiting up to the send timeout for a consumer to take it.
    pub(crate) fn send_blocking(&self, name: &str, msg: &[u8]) -> anyhow::Result<()> {
        self.socket.set_sndtimeo(millis(self.send_timeout))?;
        let result = loop {
            match self.socket.send(msg, 0) {
                // A signal: try again (the timeout restarts, it still bounds the wait).
                Err(zmq::Error::EINTR) => continue,
                r => break r,
            }
        };
        self.socket.set_sndtimeo(-1)?;
        match result {
            Ok(()) => Ok(()),
            Err(zmq::Error::EAGAIN) => bail!(
                "the {name} message was not sent: no consumer took it within {:.1} s (--send-timeout)",
                self.send_timeout.as_secs_f64()
            ),
            Err(e) => Err(e).with_context(|| format!("cannot send the {name} message")),
        }
    }
}

/// A duration as zmq's milliseconds (at most i32::MAX).
fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}
