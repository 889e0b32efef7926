//! `detflow stream2-send` as a DECTRIS DCU: a ZeroMQ PULL consumer (the zmq crate, as a
//! beamline's Rust consumer would use it) receives one series, decodes it with
//! `detflow_stream2::decode` and gets the simulator's frames back exactly, every channel
//! (channel k = seed + k), dtype and compression; `start` waits for a late consumer; images
//! a consumer does not take are dropped and counted. Traffic stays on 127.0.0.1.

mod common;

use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use detflow_hal::PixelType;
use detflow_stream2::{Message, Payload, Start, TypedArray, decode};
use detflow_writer::Codec;

use common::stream2::{receive_series, sim_frames};
use common::{free_port, lines_of};

/// Every receive waits at most this long: a test that hangs fails instead.
const RECV_DEADLINE_MS: i32 = 60_000;

/// Start `detflow stream2-send --json` with `args` on a fresh port; returns it and the
/// endpoint. Its stderr is forwarded line by line to the returned channel.
fn sender(args: &[&str]) -> (Child, String, mpsc::Receiver<String>) {
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let mut child = common::detflow()
        .args(["stream2-send", "--json", "--bind", &endpoint])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the detflow binary runs");
    let rx = lines_of(child.stderr.take().unwrap());
    (child, endpoint, rx)
}

/// Wait for the sender to end; its output with the stderr lines collected so far.
fn finish(child: Child, stderr: &mpsc::Receiver<String>) -> (Output, String) {
    let out = child.wait_with_output().unwrap();
    let err: Vec<String> = stderr.iter().collect();
    (out, err.join("\n"))
}

fn pull(endpoint: &str, rcvhwm: i32) -> zmq::Socket {
    let s = zmq::Context::new().socket(zmq::PULL).unwrap();
    s.set_rcvhwm(rcvhwm).unwrap();
    s.set_rcvtimeo(RECV_DEADLINE_MS).unwrap();
    s.set_linger(0).unwrap();
    s.connect(endpoint).unwrap();
    s
}

/// The pixels of a channel, decoded with detflow's codecs.
fn pixels(a: &TypedArray<'_>, dtype: PixelType) -> Vec<u8> {
    match a.payload {
        Payload::Raw(b) => b.to_vec(),
        Payload::Compressed {
            compression, bytes, ..
        } => {
            let codec = match compression {
                detflow_stream2::Compression::Bslz4 => Codec::BitshuffleLz4,
                detflow_stream2::Compression::Lz4 => Codec::Lz4,
            };
            codec.decode(dtype, bytes).unwrap()
        }
    }
}

struct Case {
    dtype: PixelType,
    compress: &'static str,
    channels: usize,
    extra: &'static [&'static str],
}

fn check_start(s: &Start<'_>, c: &Case, frames: u64) {
    let names: Vec<String> = (1..=c.channels).map(|k| format!("threshold_{k}")).collect();
    assert_eq!(s.channels, names);
    assert_eq!(s.image_dtype, Some(c.dtype));
    assert_eq!((s.image_size_x, s.image_size_y), (Some(40), Some(24)));
    assert_eq!(s.number_of_images, Some(frames));
    assert_eq!(s.threshold_energy.len(), c.channels);
    assert_eq!(s.detector_serial_number, Some("DF-SIM-0001"));
    assert_eq!(s.incident_wavelength, Some(1.0));
    assert_eq!(s.beam_center_x, Some(20.0));
    let all = c.extra.contains(&"all");
    assert_eq!(s.pixel_mask.len(), if all { c.channels } else { 0 });
    assert_eq!(s.flatfield.len(), if all { c.channels } else { 0 });
    assert_eq!(s.countrate_correction_lookup_table.is_some(), all);
}

/// Send 5 frames of 40x24 for `c`, seed 11; the consumer gets exactly the simulator's frames.
fn series_round_trip(c: &Case) {
    let (frames, seed) = (5u64, 11u64);
    let channels = c.channels.to_string();
    let mut args = vec![
        "--size",
        "40x24",
        "--frames",
        "5",
        "--seed",
        "11",
        "--dtype",
        c.dtype.name(),
        "--compress",
        c.compress,
        "--channels",
        &channels,
        "--wait-for-consumer",
        "60",
        "--send-timeout",
        "60",
    ];
    args.extend_from_slice(c.extra);
    let (child, endpoint, stderr) = sender(&args);
    let consumer = pull(&endpoint, 1000);
    let msgs = receive_series(&consumer);
    let (out, err) = finish(child, &stderr);
    assert!(out.status.success(), "stream2-send {args:?} failed: {err}");
    let report = common::summary(&out);

    let Message::Start(start) = decode(&msgs[0]).unwrap() else {
        panic!("the first message is not start")
    };
    check_start(&start, c, frames);
    let skipped: Vec<u64> = if c.extra.contains(&"--skip") {
        vec![1, 3]
    } else {
        vec![]
    };
    let expected_ids: Vec<u64> = (0..frames).filter(|i| !skipped.contains(i)).collect();
    assert_eq!(msgs.len(), expected_ids.len() + 2, "start, the images, end");
    let expected: Vec<Vec<Vec<u8>>> = (0..c.channels as u64)
        .map(|k| sim_frames(40, 24, c.dtype, seed + k, frames))
        .collect();
    for (m, &id) in msgs[1..msgs.len() - 1].iter().zip(&expected_ids) {
        let Message::Image(img) = decode(m).unwrap() else {
            panic!("not an image")
        };
        assert_eq!(img.series, start.series);
        assert_eq!(img.image_id, id);
        assert_eq!(img.data.len(), c.channels);
        for (k, (name, a)) in img.data.iter().enumerate() {
            assert_eq!(*name, format!("threshold_{}", k + 1));
            assert_eq!(a.dims, [24, 40]);
            assert_eq!(a.array.tag, TypedArray::tag_of(c.dtype));
            assert_eq!(
                pixels(&a.array, c.dtype),
                expected[k][id as usize],
                "image {id} channel {k} ({})",
                c.compress
            );
        }
        let user_data = img
            .user_data
            .map(|u| detflow_stream2::user_data_json(u).unwrap());
        let want = c
            .extra
            .contains(&"--user-data")
            .then(|| format!("{{\"frame\":{id}}}"));
        assert_eq!(user_data, want);
        assert_eq!(img.real_time.unwrap().denominator, 50_000_000);
    }
    assert_eq!(report["sent"], expected_ids.len() as u64);
    assert_eq!(report["dropped"], 0);
    assert_eq!(report["skipped"], skipped.len() as u64);
    assert_eq!(report["series_unique_id"], start.series.unique_id);
}

#[test]
fn u16_bslz4_one_channel() {
    series_round_trip(&Case {
        dtype: PixelType::U16,
        compress: "bslz4",
        channels: 1,
        extra: &[],
    });
}

#[test]
fn u8_lz4_two_channels_with_user_data() {
    let extra = &["--user-data"];
    series_round_trip(&Case {
        dtype: PixelType::U8,
        compress: "lz4",
        channels: 2,
        extra,
    });
}

#[test]
fn u32_uncompressed_three_channels_with_gaps() {
    let extra = &["--skip", "1,3"];
    series_round_trip(&Case {
        dtype: PixelType::U32,
        compress: "none",
        channels: 3,
        extra,
    });
}

#[test]
fn u32_bslz4_four_channels_header_detail_all() {
    let extra = &["--header-detail", "all"];
    series_round_trip(&Case {
        dtype: PixelType::U32,
        compress: "bslz4",
        channels: 4,
        extra,
    });
}

#[test]
fn start_waits_for_a_consumer_that_connects_late() {
    // start may block only 1 s, the consumer comes 2 s after the bind: start is sent only
    // because the sender waited for the consumer to connect.
    let args = [
        "--size",
        "16x8",
        "--frames",
        "3",
        "--wait-for-consumer",
        "120",
        "--send-timeout",
        "1",
    ];
    let (child, endpoint, stderr) = sender(&args);
    wait_log(&stderr, "PUSH socket bound");
    std::thread::sleep(Duration::from_secs(2)); // being late is the point of this test
    let msgs = receive_series(&pull(&endpoint, 1000));
    let (out, err) = finish(child, &stderr);
    assert!(out.status.success(), "{err}");
    assert!(matches!(decode(&msgs[0]).unwrap(), Message::Start(_)));
    assert_eq!(msgs.len(), 5);
    assert_eq!(common::summary(&out)["consumer_connected"], true);
}

/// Wait (with the receive deadline) for the sender's log line containing `what`.
fn wait_log(stderr: &mpsc::Receiver<String>, what: &str) {
    let deadline = Duration::from_millis(RECV_DEADLINE_MS as u64);
    loop {
        let line = stderr
            .recv_timeout(deadline)
            .unwrap_or_else(|_| panic!("the sender logs {what:?}"));
        if line.contains(what) {
            return;
        }
    }
}

#[test]
fn images_a_consumer_does_not_take_are_dropped_and_counted() {
    // 200 frames of 256 KiB into one consumer that connects and reads nothing until the
    // sender says the images are done: its queue and the sockets' buffers hold a few MB, the
    // rest is dropped. Then it reads: every image counted as sent arrives, and end.
    let args = [
        "--size",
        "256x256",
        "--dtype",
        "u32",
        "--compress",
        "none",
        "--frames",
        "200",
        "--sndhwm",
        "1",
        "--wait-for-consumer",
        "60",
        "--send-timeout",
        "60",
    ];
    let (child, endpoint, stderr) = sender(&args);
    let consumer = pull(&endpoint, 1);
    wait_log(&stderr, "images done");
    let msgs = receive_series(&consumer);
    let (out, err) = finish(child, &stderr);
    assert!(out.status.success(), "{err}");
    let report = common::summary(&out);
    let (sent, dropped) = (
        report["sent"].as_u64().unwrap(),
        report["dropped"].as_u64().unwrap(),
    );
    assert!(dropped > 0, "{report}");
    assert_eq!(sent + dropped, 200, "{report}");
    assert_eq!(
        msgs.len() as u64,
        sent + 2,
        "every image counted as sent arrives"
    );
}

#[test]
fn start_that_no_consumer_takes_is_an_error_naming_it() {
    let args = [
        "--size",
        "16x8",
        "--frames",
        "3",
        "--wait-for-consumer",
        "0.2",
        "--send-timeout",
        "0.2",
    ];
    let (child, _endpoint, stderr) = sender(&args);
    let (out, err) = finish(child, &stderr);
    assert!(!out.status.success());
    assert!(err.contains("no consumer connected"), "{err}");
    assert!(err.contains("the start message was not sent"), "{err}");
    assert_eq!(common::summary(&out)["sent"], 0);
}

#[test]
fn a_replayed_file_is_sent_in_every_channel() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run(&[
        "acquire",
        "--json",
        "--path",
        dir.path().to_str().unwrap(),
        "--name",
        "r",
        "--size",
        "24x16",
        "--frames",
        "3",
        "--seed",
        "5",
        "--codec",
        "bslz4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = common::summary(&out)["files"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let args = [
        "--replay",
        &file,
        "--frames",
        "3",
        "--channels",
        "2",
        "--compress",
        "lz4",
        "--wait-for-consumer",
        "60",
    ];
    let (child, endpoint, stderr) = sender(&args);
    let msgs = receive_series(&pull(&endpoint, 1000));
    let (out, err) = finish(child, &stderr);
    assert!(out.status.success(), "{err}");
    let expected = sim_frames(24, 16, PixelType::U16, 5, 3);
    assert_eq!(msgs.len(), 5);
    for (i, m) in msgs[1..4].iter().enumerate() {
        let Message::Image(img) = decode(m).unwrap() else {
            panic!("not an image")
        };
        for (_, a) in &img.data {
            assert_eq!(pixels(&a.array, PixelType::U16), expected[i]);
        }
    }
}

#[test]
fn distinct_frames_repeat_the_first_frames_encoded_once() {
    // 12 images from 5 distinct frames, two channels; image 2 skipped, so its frame is
    // still made for images 7 and 12 - 5 = 7.
    let (child, endpoint, stderr) = sender(&[
        "--size",
        "40x24",
        "--frames",
        "12",
        "--seed",
        "3",
        "--channels",
        "2",
        "--distinct-frames",
        "5",
        "--skip",
        "2",
        "--wait-for-consumer",
        "60",
        "--send-timeout",
        "60",
    ]);
    let consumer = pull(&endpoint, 1000);
    let msgs = receive_series(&consumer);
    let (out, err) = finish(child, &stderr);
    assert!(out.status.success(), "{err}");
    let report = common::summary(&out);
    assert_eq!(
        (&report["sent"], &report["skipped"]),
        (&11.into(), &1.into())
    );
    let made: Vec<Vec<Vec<u8>>> = (0..2)
        .map(|k| sim_frames(40, 24, PixelType::U16, 3 + k, 5))
        .collect();
    let ids: Vec<u64> = (0..12).filter(|&i| i != 2).collect();
    assert_eq!(msgs.len(), ids.len() + 2, "start, the images, end");
    for (m, &id) in msgs[1..msgs.len() - 1].iter().zip(&ids) {
        let Message::Image(img) = decode(m).unwrap() else {
            panic!("not an image")
        };
        assert_eq!(img.image_id, id);
        for (k, (_, array)) in img.data.iter().enumerate() {
            let got = pixels(&array.array, PixelType::U16);
            assert_eq!(got, made[k][(id % 5) as usize], "image {id} channel {k}");
        }
    }
}

#[test]
fn pause_before_holds_the_series_until_a_line_on_stdin() {
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let mut child = common::detflow()
        .args(["stream2-send", "--json", "--bind", &endpoint])
        .args(["--size", "40x24", "--frames", "6", "--pause-before", "3"])
        .args(["--wait-for-consumer", "60", "--send-timeout", "60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the detflow binary runs");
    let stderr = lines_of(child.stderr.take().unwrap());
    let consumer = pull(&endpoint, 1000);
    let id = |m: &zmq::Message| detflow_stream2::peek(m).unwrap().image_id;
    let first: Vec<_> = (0..4).map(|_| consumer.recv_msg(0).unwrap()).collect();
    assert_eq!(
        first.iter().map(id).collect::<Vec<_>>(),
        [None, Some(0), Some(1), Some(2)]
    );
    let deadline = Duration::from_millis(RECV_DEADLINE_MS as u64);
    let paused = std::iter::from_fn(|| stderr.recv_timeout(deadline).ok())
        .find(|l| l.contains("paused before image 3"))
        .expect("stream2-send logs the pause");
    // Paused: image 3 has not been sent, so nothing more has arrived.
    assert_eq!(
        consumer.recv_msg(zmq::DONTWAIT).map(|m| id(&m)),
        Err(zmq::Error::EAGAIN),
        "after {paused}"
    );
    use std::io::Write as _;
    writeln!(child.stdin.take().unwrap(), "go on").unwrap();
    let rest: Vec<_> = (0..4).map(|_| consumer.recv_msg(0).unwrap()).collect();
    assert_eq!(
        rest.iter().map(id).collect::<Vec<_>>(),
        [Some(3), Some(4), Some(5), None]
    );
    let (out, err) = finish(child, &stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(common::summary(&out)["sent"], 6);
}
