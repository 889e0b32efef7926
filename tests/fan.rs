//! `detflow fan` between a Stream V2 detector (`stream2-send`, or this test as a detector
//! sending bytes it made) and Rust PULL consumers, one per rank: each rank gets `start` and
//! `end` with the fan's keys and exactly its images by the block rule, byte for byte; a rank
//! that does not read loses images (counted) without holding up the others; a stop ends
//! every rank's series. Traffic stays on 127.0.0.1; every wait has a deadline.

mod common;
#[path = "../writer/tests/common/rank_files.rs"]
mod rank_files;

use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use detflow_hal::PixelType;
use detflow_stream2::fan::{Deal, RankKeys};
use detflow_stream2::{
    End, Image, Message, MultiDimArray, Payload, Series, Start, TypedArray, decode, encode,
};
use detflow_writer::Codec;

use common::stream2::{receive_series, sim_frames};
use common::{free_port, lines_of};

/// Every receive and every wait for a log line lasts at most this long.
const DEADLINE: Duration = Duration::from_secs(60);

/// A running `detflow` child with its stderr and stdout lines on channels.
struct Proc {
    child: Child,
    stderr: mpsc::Receiver<String>,
    stdout: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let mut child = common::detflow()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the detflow binary runs");
        let stderr = lines_of(child.stderr.take().unwrap());
        let stdout = lines_of(child.stdout.take().unwrap());
        Proc {
            child,
            stderr,
            stdout,
        }
    }

    /// Wait for the stderr line containing every one of `what`; returns it.
    fn wait_log(&self, what: &[&str]) -> String {
        self.wait_logs(&[what]).remove(0)
    }

    /// Wait for a stderr line for each of `lines` (each given by the texts it contains), in
    /// any order; returns them in the order of `lines`.
    fn wait_logs(&self, lines: &[&[&str]]) -> Vec<String> {
        let mut found = vec![None; lines.len()];
        while found.iter().any(Option::is_none) {
            let line = self
                .stderr
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|_| panic!("detflow logs lines with {lines:?}; found {found:?}"));
            for (want, slot) in lines.iter().zip(&mut found) {
                if slot.is_none() && want.iter().all(|w| line.contains(w)) {
                    *slot = Some(line.clone());
                }
            }
        }
        found.into_iter().map(Option::unwrap).collect()
    }

    /// The next JSON object on stdout.
    fn next_json(&self) -> serde_json::Value {
        let line = self
            .stdout
            .recv_timeout(DEADLINE)
            .expect("detflow prints a JSON line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Wait for the exit; its status and every stderr line not read yet.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let err: Vec<String> = self.stderr.iter().collect();
        (status, err.join("\n"))
    }
}

/// `detflow stream2-send --json` bound at `from` with `args`, waiting (60 s at most) for
/// the fan as its consumer and for it to take `start` and `end`.
fn stream2_send(from: &str, args: &[&str]) -> Proc {
    let mut all = vec!["stream2-send", "--json", "--bind", from];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--wait-for-consumer", "60", "--send-timeout", "60"]);
    Proc::spawn(&all)
}

/// Start `detflow fan --json` from `from` to `ranks` ranks on ports the OS picks, with
/// `extra` flags; returns it and each rank's endpoint (from its log).
fn fan(from: &str, ranks: u16, extra: &[&str]) -> (Proc, Vec<String>) {
    let n = ranks.to_string();
    let mut args = vec![
        "fan",
        "--json",
        "--from",
        from,
        "--ranks",
        &n,
        "--bind",
        "tcp://127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let p = Proc::spawn(&args);
    let endpoints = (0..ranks)
        .map(|k| {
            let line = p.wait_log(&[&format!("rank {k} listening on")]);
            let at = line.find("listening on ").unwrap() + "listening on ".len();
            line[at..].split_whitespace().next().unwrap().to_owned()
        })
        .collect();
    (p, endpoints)
}

/// A PULL consumer of one rank, connected, with the fan's log saying so.
fn consumer(fan: &Proc, rank: u64, endpoint: &str, rcvhwm: i32) -> zmq::Socket {
    connect(fan, rank, endpoint, rcvhwm, None)
}

/// A PULL consumer with a receive queue of `rcvhwm` messages and, if given, a kernel
/// buffer of `rcvbuf` bytes (which also stops the kernel from growing it).
fn connect(fan: &Proc, rank: u64, endpoint: &str, rcvhwm: i32, rcvbuf: Option<i32>) -> zmq::Socket {
    let s = zmq::Context::new().socket(zmq::PULL).unwrap();
    s.set_rcvhwm(rcvhwm).unwrap();
    if let Some(bytes) = rcvbuf {
        s.set_rcvbuf(bytes).unwrap();
    }
    s.set_rcvtimeo(DEADLINE.as_millis() as i32).unwrap();
    s.set_linger(0).unwrap();
    s.connect(endpoint).unwrap();
    fan.wait_log(&[&format!("rank {rank}: consumer connected")]);
    s
}

fn image_id(m: &[u8]) -> u64 {
    detflow_stream2::peek(m).unwrap().image_id.unwrap()
}

/// The start of `msgs`, checked to carry rank `rank`'s keys of `deal`.
fn start_of<'m>(msgs: &'m [zmq::Message], rank: u64, deal: Deal) -> Start<'m> {
    let Message::Start(start) = decode(&msgs[0]).unwrap() else {
        panic!("rank {rank}'s first message is not start")
    };
    assert_eq!(
        RankKeys::from_start(&start).unwrap(),
        Some(RankKeys::new(rank, deal).unwrap())
    );
    start
}

/// The end of `msgs`: `end` of `series` with rank `rank`'s keys, byte for byte.
fn check_end(msgs: &[zmq::Message], series: Series<'_>, rank: u64, deal: Deal) {
    let mut plain = Vec::new();
    encode(&Message::End(End { series }), &mut plain);
    let mut want = Vec::new();
    RankKeys::new(rank, deal)
        .unwrap()
        .add_to(&plain, &mut want)
        .unwrap();
    assert_eq!(&msgs.last().unwrap()[..], &want[..], "rank {rank}'s end");
}

#[test]
fn three_ranks_get_their_blocks_of_a_stream2_send_series() {
    let (frames, seed) = (13u64, 11u64);
    let from = format!("tcp://127.0.0.1:{}", free_port());
    let extra = ["--frames-per-block", "2", "--series", "1"];
    let (fan, endpoints) = fan(&from, 3, &[&extra[..], &["--send-timeout", "60"]].concat());
    let consumers: Vec<_> = (0..3)
        .map(|k| consumer(&fan, k, &endpoints[k as usize], 1000))
        .collect();
    let sender = stream2_send(
        &from,
        &[
            "--size",
            "40x24",
            "--frames",
            "13",
            "--seed",
            "11",
            "--compress",
            "bslz4",
        ],
    );
    let received: Vec<Vec<zmq::Message>> = consumers.iter().map(receive_series).collect();
    let sent = sender.next_json();
    let report = fan.next_json();
    let (status, err) = sender.finish();
    assert!(status.success(), "stream2-send: {err}");
    let (status, err) = fan.finish();
    assert!(status.success(), "fan: {err}");

    assert_eq!(sent["sent"], frames);
    assert_eq!(report["images_in"], frames);
    assert_eq!(report["bad_messages"], 0);
    assert_eq!(report["ended_by"], "end");
    assert_eq!(report["series_unique_id"], sent["series_unique_id"]);
    let deal = Deal::new(3, 2).unwrap();
    let expected = sim_frames(40, 24, PixelType::U16, seed, frames);
    let mut first_start = None;
    for (k, msgs) in received.iter().enumerate() {
        let k = k as u64;
        let start = start_of(msgs, k, deal);
        let mut plain = start.clone();
        plain.extra.clear();
        assert_eq!(
            *first_start.get_or_insert(plain.clone()),
            plain,
            "same start"
        );
        check_end(msgs, start.series, k, deal);
        let images = &msgs[1..msgs.len() - 1];
        let ids: Vec<u64> = images.iter().map(|m| image_id(m)).collect();
        let want: Vec<u64> = (0..frames).filter(|&i| (i / 2) % 3 == k).collect();
        assert_eq!(ids, want, "rank {k}'s images");
        for m in images {
            let Message::Image(img) = decode(m).unwrap() else {
                panic!("not an image")
            };
            let Payload::Compressed { bytes, .. } = img.data[0].1.array.payload else {
                panic!("stream2-send sent bslz4")
            };
            let pixels = Codec::BitshuffleLz4.decode(PixelType::U16, bytes).unwrap();
            assert_eq!(
                pixels, expected[img.image_id as usize],
                "image {}",
                img.image_id
            );
            // Byte for byte what stream2-send encoded (its encoder is deterministic).
            let mut again = Vec::new();
            encode(&Message::Image(img), &mut again);
            assert_eq!(&m[..], &again[..]);
        }
        let r = &report["ranks"][k as usize];
        assert_eq!(r["endpoint"], endpoints[k as usize]);
        assert_eq!(r["sent"], want.len() as u64);
        assert_eq!(r["dropped"], 0);
        let bytes: usize = images.iter().map(|m| m.len()).sum();
        assert_eq!(r["bytes"], bytes as u64);
        assert_eq!(
            (r["start_sent"].as_bool(), r["end_sent"].as_bool()),
            (Some(true), Some(true))
        );
    }
}

/// A PUSH socket bound where the fan connects: this test as the detector.
fn detector() -> (zmq::Socket, String) {
    let s = zmq::Context::new().socket(zmq::PUSH).unwrap();
    s.set_sndhwm(0).unwrap();
    s.set_sndtimeo(DEADLINE.as_millis() as i32).unwrap();
    s.set_linger(DEADLINE.as_millis() as i32).unwrap();
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    s.bind(&endpoint).unwrap();
    (s, endpoint)
}

/// An image message of `series` with a 3x2 u16 frame made from `id`.
fn image(series: Series<'_>, id: u64, user_data: bool) -> Vec<u8> {
    let pixels: Vec<u8> = (0..12).map(|b| (id as u8).wrapping_mul(31) ^ b).collect();
    let img = Image {
        series,
        image_id: id,
        user_data: user_data.then_some(&[0xa1, 0x61, 0x66, 0x01][..]),
        data: vec![(
            "threshold_1",
            MultiDimArray {
                dims: [2, 3],
                array: TypedArray {
                    tag: 69,
                    payload: Payload::Raw(&pixels),
                },
            },
        )],
        ..Image::default()
    };
    let mut out = Vec::new();
    encode(&Message::Image(img), &mut out);
    out
}

/// A start as ANSTO's simulator sends it (no 55799 prefix), as an indefinite map, with an
/// unknown key.
fn plain_start(series: Series<'_>) -> Vec<u8> {
    let text = |out: &mut Vec<u8>, s: &str| {
        assert!(s.len() < 24);
        out.push(0x60 + s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    };
    let mut out = vec![0xbf];
    for (k, v) in [("type", "start"), ("series_unique_id", series.unique_id)] {
        text(&mut out, k);
        text(&mut out, v);
    }
    for (k, v) in [("series_id", series.id), ("number_of_images", 9)] {
        text(&mut out, k);
        out.push(u8::try_from(v).ok().filter(|&v| v < 24).unwrap());
    }
    text(&mut out, "beamline_note");
    text(&mut out, "from a test");
    out.push(0xff);
    out
}

/// Send `series`' start (`plain_start`, 9 images) and images `ids` from the test's detector.
fn send_start_and_images(det: &zmq::Socket, series: Series<'_>, ids: std::ops::Range<u64>) {
    if ids.start == 0 {
        det.send(plain_start(series), 0).unwrap();
    }
    for i in ids {
        det.send(image(series, i, false), 0).unwrap();
    }
}

fn send_end(det: &zmq::Socket, series: Series<'_>) {
    let mut end = Vec::new();
    encode(&Message::End(End { series }), &mut end);
    det.send(end, 0).unwrap();
}

#[test]
fn a_rank_that_connects_after_the_start_gets_it_before_its_first_image() {
    // Policy block: the fan waits at rank 1's first image until a consumer connects, then
    // sends it the start it missed, and loses nothing.
    let (det, from) = detector();
    let deal = Deal::new(2, 1).unwrap();
    let (fan, endpoints) = fan(&from, 2, &["--series", "1", "--policy", "block"]);
    let rank0 = consumer(&fan, 0, &endpoints[0], 1000);
    let series = Series {
        id: 4,
        unique_id: "late",
    };
    send_start_and_images(&det, series, 0..9);
    send_end(&det, series);
    fan.wait_logs(&[
        &["rank 1: the start message was not sent now: no consumer connected"],
        &["rank 1: the fan waits for it (--policy block)"],
    ]);
    // The fan logs the late start as it sends it, and the connection when it next reads its
    // monitor: in either order.
    let rank1 = zmq::Context::new().socket(zmq::PULL).unwrap();
    rank1.set_rcvtimeo(DEADLINE.as_millis() as i32).unwrap();
    rank1.set_linger(0).unwrap();
    rank1.connect(&endpoints[1]).unwrap();
    fan.wait_logs(&[
        &["rank 1: consumer connected"],
        &["rank 1: start sent late, before image 1"],
    ]);
    for (k, c) in [(0u64, &rank0), (1, &rank1)] {
        let msgs = receive_series(c);
        assert_eq!(start_of(&msgs, k, deal).series, series);
        check_end(&msgs, series, k, deal);
        let ids: Vec<u64> = msgs[1..msgs.len() - 1]
            .iter()
            .map(|m| image_id(m))
            .collect();
        assert_eq!(ids, (k..9).step_by(2).collect::<Vec<_>>(), "rank {k}");
    }
    let report = fan.next_json();
    let r = &report["ranks"][1];
    assert_eq!(
        (&r["sent"], &r["dropped"]),
        (&4.into(), &0.into()),
        "{report}"
    );
    assert_eq!(
        (&r["start_sent"], &r["end_sent"]),
        (&true.into(), &true.into())
    );
    let (status, err) = fan.finish();
    assert!(status.success(), "{err}");
}

#[test]
fn under_drop_a_late_rank_gets_the_start_then_exactly_the_images_counted_sent() {
    // Policy drop: rank 1's images before its consumer can take them are dropped; from then
    // on it gets the start it missed, then its images, then the end, and the counts say
    // which. When the link is ready after the connection is up to libzmq's handshake, so
    // images go on until rank 1 has its first message, and the test asserts the accounting.
    let (det, from) = detector();
    let deal = Deal::new(2, 1).unwrap();
    let (fan, endpoints) = fan(&from, 2, &["--series", "1"]);
    let rank0 = consumer(&fan, 0, &endpoints[0], 1000);
    let series = Series {
        id: 5,
        unique_id: "late-drop",
    };
    send_start_and_images(&det, series, 0..5);
    // Rank 0 has image 4, so the fan has dealt image 3: rank 1's 1 and 3 are gone.
    for _ in 0..4 {
        rank0
            .recv_msg(0)
            .expect("rank 0's start and images 0, 2, 4");
    }
    let rank1 = consumer(&fan, 1, &endpoints[1], 1000);
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut next = 5;
    while rank1.poll(zmq::POLLIN, 10).unwrap() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "rank 1 never got its start"
        );
        send_start_and_images(&det, series, next..next + 2);
        next += 2;
    }
    send_start_and_images(&det, series, next..next + 4);
    next += 4;
    send_end(&det, series);
    let msgs = receive_series(&rank1);
    assert_eq!(start_of(&msgs, 1, deal).series, series);
    check_end(&msgs, series, 1, deal);
    let ids: Vec<u64> = msgs[1..msgs.len() - 1]
        .iter()
        .map(|m| image_id(m))
        .collect();
    let report = fan.next_json();
    let r = &report["ranks"][1];
    let (sent, dropped) = (r["sent"].as_u64().unwrap(), r["dropped"].as_u64().unwrap());
    assert_eq!(
        sent + dropped,
        next / 2,
        "rank 1's images 1, 3, ..: {report}"
    );
    assert!(dropped >= 2, "images 1 and 3 had no consumer: {report}");
    assert!(
        sent >= 2,
        "the last two came after rank 1 had its start: {report}"
    );
    assert_eq!(
        ids.len() as u64,
        sent,
        "every image counted sent arrives: {report}"
    );
    let tail: Vec<u64> = (next - 2 * sent..next).filter(|i| i % 2 == 1).collect();
    assert_eq!(ids, tail, "the images after the drops, in order");
    assert_eq!(r["start_sent"], true, "{report}");
    drop(rank0);
    let (status, err) = fan.finish();
    assert!(status.success(), "{err}");
}

#[test]
fn image_bytes_reach_their_rank_unchanged_series_after_series() {
    let (det, from) = detector();
    let (fan, endpoints) = fan(&from, 2, &["--frames-per-block", "3", "--series", "2"]);
    let consumers: Vec<_> = (0..2)
        .map(|k| consumer(&fan, k, &endpoints[k as usize], 1000))
        .collect();
    let deal = Deal::new(2, 3).unwrap();
    // Series 1: a start without prefix, images out of order and with gaps, a message that
    // is not Stream V2. Series 2: a start as detflow encodes it.
    let s1 = Series {
        id: 1,
        unique_id: "one",
    };
    let s2 = Series {
        id: 2,
        unique_id: "two",
    };
    let ids1 = [0u64, 1, 4, 3, 2, 9, 10, 5, 17, 6];
    let mut start2 = Vec::new();
    encode(
        &Message::Start(Start {
            series: s2,
            ..Start::default()
        }),
        &mut start2,
    );
    let sent: Vec<(Series<'_>, Vec<u8>, Vec<Vec<u8>>)> = vec![
        (
            s1,
            plain_start(s1),
            ids1.iter().map(|&i| image(s1, i, i % 2 == 0)).collect(),
        ),
        (s2, start2, (0..7).map(|i| image(s2, i, false)).collect()),
    ];
    for (k, (series, start, images)) in sent.iter().enumerate() {
        det.send(&start[..], 0).unwrap();
        for (n, img) in images.iter().enumerate() {
            det.send(&img[..], 0).unwrap();
            if k == 0 && n == 4 {
                det.send(&b"not a Stream V2 message"[..], 0).unwrap();
            }
        }
        let mut end = Vec::new();
        encode(&Message::End(End { series: *series }), &mut end);
        det.send(end, 0).unwrap();
    }
    for (n, (series, start, images)) in sent.iter().enumerate() {
        let report = fan.next_json();
        assert_eq!(report["series_id"], series.id);
        assert_eq!(report["images_in"], images.len() as u64);
        assert_eq!(report["bad_messages"], u64::from(n == 0));
        for (k, c) in consumers.iter().enumerate() {
            let k = k as u64;
            let msgs = receive_series(c);
            let mut want_start = Vec::new();
            RankKeys::new(k, deal)
                .unwrap()
                .add_to(start, &mut want_start)
                .unwrap();
            assert_eq!(
                &msgs[0][..],
                &want_start[..],
                "series {} rank {k}'s start",
                series.id
            );
            let got = start_of(&msgs, k, deal);
            assert_eq!(got.series, *series);
            check_end(&msgs, *series, k, deal);
            let want: Vec<&Vec<u8>> = images
                .iter()
                .filter(|m| deal.rank_of(image_id(m)) == k)
                .collect();
            let got: Vec<&[u8]> = msgs[1..msgs.len() - 1].iter().map(|m| &m[..]).collect();
            assert_eq!(got.len(), want.len(), "series {} rank {k}", series.id);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g, &&w[..], "image {} byte for byte", image_id(w));
            }
            assert_eq!(report["ranks"][k as usize]["sent"], want.len() as u64);
        }
    }
    fan.wait_log(&["not Stream V2, not forwarded"]);
    let (status, err) = fan.finish();
    assert!(status.success(), "{err}");
}

#[test]
fn a_rank_that_does_not_read_loses_images_counted_and_the_others_do_not() {
    // 300 images of 256 KiB in blocks of 2 over 3 ranks. Rank 0 reads as it comes, and gets
    // 10 images (the sender skips its others): fewer than --sndhwm, so it cannot lose one
    // however slowly it reads. Rank 1 is connected but reads nothing until the fan names it
    // for dropping: it has 100 images and room for about 40 (16 queued in the fan, 4 MB of
    // kernel send buffer, 64 KiB of receive buffer, 1 queued). Rank 2 never connects.
    let from = format!("tcp://127.0.0.1:{}", free_port());
    let deal = Deal::new(3, 2).unwrap();
    let args = [
        "--frames-per-block",
        "2",
        "--series",
        "1",
        "--sndhwm",
        "16",
        "--send-timeout",
        "60",
    ];
    let (fan, endpoints) = fan(&from, 3, &args);
    let reader = consumer(&fan, 0, &endpoints[0], 1000);
    let stalled = connect(&fan, 1, &endpoints[1], 1, Some(64 << 10));
    let rank0 = std::thread::spawn(move || {
        let msgs = receive_series(&reader);
        let ids: Vec<u64> = msgs[1..msgs.len() - 1]
            .iter()
            .map(|m| image_id(m))
            .collect();
        (ids, msgs.len())
    });
    let skip: Vec<String> = (30..300)
        .filter(|&i| deal.rank_of(i) == 0)
        .map(|i| i.to_string())
        .collect();
    let skip = skip.join(",");
    let sender = stream2_send(
        &from,
        &[
            "--size",
            "256x256",
            "--dtype",
            "u32",
            "--compress",
            "none",
            "--frames",
            "300",
            "--skip",
            &skip,
            "--sndhwm",
            "0",
        ],
    );
    fan.wait_logs(&[
        &["rank 2: the start message was not sent now: no consumer connected"],
        &["rank 2: images dropped, no consumer connected"],
        &["rank 1: images dropped, fell behind"],
    ]);
    // Now rank 1 reads: what the fan queued for it, and the end that waited for it.
    let msgs1 = receive_series(&stalled);
    let report = fan.next_json();
    let sent = sender.next_json();
    let (ids0, n0) = rank0.join().unwrap();
    for p in [sender, fan] {
        let (status, err) = p.finish();
        assert!(status.success(), "{err}");
    }
    assert_eq!(sent["sent"], 210);
    assert_eq!(report["images_in"], 210);
    let r = |k: usize, key: &str| report["ranks"][k][key].clone();
    let want0: Vec<u64> = (0..30).filter(|&i| deal.rank_of(i) == 0).collect();
    assert_eq!(ids0, want0, "rank 0 lost nothing");
    assert_eq!(n0, 12);
    assert_eq!((r(0, "sent"), r(0, "dropped")), (10.into(), 0.into()));
    let (sent1, dropped1) = (
        r(1, "sent").as_u64().unwrap(),
        r(1, "dropped").as_u64().unwrap(),
    );
    assert!(dropped1 > 0, "{report}");
    assert_eq!(sent1 + dropped1, 100, "{report}");
    assert_eq!(
        msgs1.len() as u64,
        sent1 + 2,
        "rank 1 gets every image counted as sent"
    );
    let ids1: Vec<u64> = msgs1[1..msgs1.len() - 1]
        .iter()
        .map(|m| image_id(m))
        .collect();
    assert!(ids1.iter().all(|&i| deal.rank_of(i) == 1) && ids1.is_sorted());
    assert_eq!(
        (r(1, "start_sent"), r(1, "end_sent")),
        (true.into(), true.into())
    );
    assert_eq!((r(2, "sent"), r(2, "dropped")), (0.into(), 100.into()));
    assert_eq!(
        (r(2, "start_sent"), r(2, "end_sent")),
        (false.into(), false.into())
    );
}

#[test]
fn a_stop_during_a_series_sends_every_rank_an_end() {
    let (det, from) = detector();
    let (fan, endpoints) = fan(&from, 2, &[]);
    let consumers: Vec<_> = (0..2)
        .map(|k| consumer(&fan, k, &endpoints[k as usize], 1000))
        .collect();
    let series = Series {
        id: 5,
        unique_id: "stopped",
    };
    let mut start = Vec::new();
    encode(
        &Message::Start(Start {
            series,
            ..Start::default()
        }),
        &mut start,
    );
    det.send(start, 0).unwrap();
    for i in 0..4 {
        det.send(image(series, i, false), 0).unwrap();
    }
    // Each rank has its start and two images: the fan is mid-series.
    for c in &consumers {
        for _ in 0..3 {
            c.recv_msg(0).expect("start and two images");
        }
    }
    // SAFETY: kill sends a signal to the fan child, a process this test started.
    assert_eq!(
        unsafe { libc::kill(fan.child.id() as i32, libc::SIGINT) },
        0
    );
    let deal = Deal::new(2, 1).unwrap();
    for (k, c) in consumers.iter().enumerate() {
        let end = c.recv_msg(0).expect("an end after the stop");
        check_end(&[end], series, k as u64, deal);
    }
    let report = fan.next_json();
    assert_eq!(report["ended_by"], "stopped");
    assert_eq!(report["images_in"], 4);
    let (status, err) = fan.finish();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("stopped during series 5"), "{err}");
}

#[test]
fn a_bind_that_cannot_hold_the_ranks_is_refused_by_name() {
    for (bind, ranks, why) in [
        ("udp://127.0.0.1:5000", "2", "expected tcp://ADDR:BASEPORT"),
        ("tcp://127.0.0.1", "2", "no port"),
        (
            "tcp://127.0.0.1:65535",
            "2",
            "rank 1 would listen on port 65536",
        ),
        ("tcp://127.0.0.1:x", "2", "not a number"),
    ] {
        let out = common::run(&[
            "fan",
            "--from",
            "tcp://127.0.0.1:1",
            "--ranks",
            ranks,
            "--bind",
            bind,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bind}: {err}");
        assert!(
            err.contains(&format!("invalid bind \"{bind}\"")) && err.contains(why),
            "{err}"
        );
    }
}

#[test]
fn block_policy_waits_for_a_slow_rank_and_loses_nothing() {
    // Rank 1 reads nothing until the fan says it waits for it; then every image of both
    // ranks arrives, none dropped. The sender queues without limit, so that the wait goes
    // back to it without losses there either.
    let from = format!("tcp://127.0.0.1:{}", free_port());
    let args = [
        "--policy", "block", "--series", "1", "--sndhwm", "4", "--rcvhwm", "2",
    ];
    let (fan, endpoints) = fan(&from, 2, &args);
    let reader = consumer(&fan, 0, &endpoints[0], 1000);
    let stalled = connect(&fan, 1, &endpoints[1], 1, Some(64 << 10));
    let rank0 = std::thread::spawn(move || {
        let msgs = receive_series(&reader);
        let ids: Vec<u64> = msgs[1..msgs.len() - 1]
            .iter()
            .map(|m| image_id(m))
            .collect();
        ids
    });
    let sender = stream2_send(
        &from,
        &[
            "--size",
            "256x256",
            "--dtype",
            "u32",
            "--compress",
            "none",
            "--frames",
            "120",
            "--sndhwm",
            "0",
        ],
    );
    fan.wait_log(&["rank 1: the fan waits for it (--policy block)"]);
    let msgs1 = receive_series(&stalled);
    let report = fan.next_json();
    let ids0 = rank0.join().unwrap();
    for p in [sender, fan] {
        let (status, err) = p.finish();
        assert!(status.success(), "{err}");
    }
    let ids1: Vec<u64> = msgs1[1..msgs1.len() - 1]
        .iter()
        .map(|m| image_id(m))
        .collect();
    assert_eq!(ids0, (0..120).step_by(2).collect::<Vec<u64>>());
    assert_eq!(ids1, (1..120).step_by(2).collect::<Vec<u64>>());
    assert_eq!(report["images_in"], 120);
    for k in 0..2 {
        assert_eq!(report["ranks"][k]["sent"], 60, "{report}");
        assert_eq!(report["ranks"][k]["dropped"], 0, "{report}");
    }
}

#[test]
fn fan_master_maps_the_series_rank_files_and_an_absent_rank_by_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let series = rank_files::TestSeries::new(Codec::None);
    // Ranks 0 and 2 wrote their files; rank 1's is not there when the series ends.
    rank_files::write_rank(dir.path(), "scan", &series, 0, |_| true);
    rank_files::write_rank(dir.path(), "scan", &series, 2, |_| true);
    let master = dir.path().join("scan_master.h5");
    let (det, from) = detector();
    let extra = [
        "--frames-per-block",
        "4",
        "--series",
        "1",
        "--master",
        master.to_str().unwrap(),
        "--master-wait",
        "0.2",
    ];
    let (fan, _) = fan(&from, 3, &extra);
    let s = Series {
        id: 7,
        unique_id: &series.unique_id,
    };
    let mut start = Vec::new();
    encode(
        &Message::Start(Start {
            series: s,
            number_of_images: Some(50),
            image_size_x: Some(rank_files::W),
            image_size_y: Some(rank_files::H),
            image_dtype: Some(PixelType::U16),
            channels: series.channels.iter().map(String::as_str).collect(),
            ..Start::default()
        }),
        &mut start,
    );
    det.send(&start[..], 0).unwrap();
    let mut end = Vec::new();
    encode(&Message::End(End { series: s }), &mut end);
    det.send(&end[..], 0).unwrap();
    let report = fan.next_json();
    let (status, err) = fan.finish();
    assert!(status.success(), "fan: {err}");
    let m = &report["master"];
    assert_eq!(m["out"], master.to_str().unwrap(), "{report}");
    assert_eq!(m["number_of_images"], 50);
    assert_eq!(m["images_present"], 34);
    assert_eq!(m["series_unique_id"], "series-a");
    let r1 = &m["rank_files"][1];
    assert_eq!(r1["read"], false);
    assert_eq!(r1["missing"], 16);
    let expected_r1 = dir.path().join("scan_r1_0001.h5");
    assert_eq!(r1["file"], expected_r1.to_str().unwrap());
    assert!(err.contains("master: rank 1 0/16 images present"), "{err}");
    assert!(err.contains("no file of rank 1"), "{err}");
    // Rank 1's file appears: the master reads it.
    rank_files::write_rank(dir.path(), "scan", &series, 1, |_| true);
    let present: Vec<u8> = hdf5::File::open(&master)
        .unwrap()
        .dataset("/entry/data/image_present")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(present, vec![1u8; 50]);
    // A second run does not replace the master.
    let o = common::run(&[
        "fan",
        "--from",
        &from,
        "--ranks",
        "3",
        "--bind",
        "tcp://127.0.0.1:0",
        "--master",
        master.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("invalid master") && stderr.contains("--overwrite"),
        "{stderr}"
    );
}
