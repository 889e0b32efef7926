//! What the Stream V2 tests (`stream2-send`, `fan`) share: one series received whole, and the
//! simulator's frames to compare with.

use std::time::Duration;

use detflow_engine::backend;
use detflow_engine::config::{DetectorSettings, FrameSize};
use detflow_hal::{ErrorKind, PixelType};
use detflow_sim::SimOptions;
use detflow_stream2::{Message, decode};

/// Every message of one series, `start` to `end` (the socket's receive timeout bounds each).
pub fn receive_series(s: &zmq::Socket) -> Vec<zmq::Message> {
    let mut msgs = Vec::new();
    loop {
        let m = s
            .recv_msg(0)
            .expect("a message before the receive deadline");
        let end = matches!(decode(&m).expect("every message decodes"), Message::End(_));
        msgs.push(m);
        if end {
            return msgs;
        }
    }
}

/// The frames `detflow acquire --seed SEED` makes for these settings.
pub fn sim_frames(
    width: u32,
    height: u32,
    dtype: PixelType,
    seed: u64,
    frames: u64,
) -> Vec<Vec<u8>> {
    let d = DetectorSettings {
        size: FrameSize::new(width, height).unwrap(),
        dtype,
        seed,
        frames,
        ..DetectorSettings::default()
    };
    let opened = backend::open_sim(
        d.size.pair(),
        seed,
        d.params(),
        SimOptions::default(),
        d.acquisition(frames, frames as u32),
    )
    .unwrap();
    let mut b = opened.backend;
    b.start().unwrap();
    let mut out = Vec::new();
    while out.len() < frames as usize {
        let mut buf = vec![0u8; opened.shape.bytes()];
        match b.read_frame(&mut buf, Duration::from_secs(1)) {
            Ok(_) => out.push(buf),
            Err(e) if e.kind == ErrorKind::Timeout => {}
            Err(e) => panic!("{e}"),
        }
    }
    out
}
