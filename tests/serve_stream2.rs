//! `detflow serve --backend stream2`: the daemon receives a Stream V2 detector's series from
//! start-up (a sender in this test stands in for the detector's DCU) and writes each series
//! that arrives while `HDF1:Capture = 1` to a file of its own, named as areaDetector names it;
//! a series that arrives while Capture = 0 is received and not written. Driven over Channel
//! Access by a raw client (the CA crate's probe), on 127.0.0.1 with a port of its own.

mod common;

use std::io::{BufRead as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::ca::{Client, num, text};
use detflow_hal::PixelType;
use detflow_stream2::fan::RankKeys;
use detflow_stream2::{
    Compression, End, Image, Message, MultiDimArray, Payload, Rational, Series, Start, TypedArray,
};
use detflow_writer::Codec;

/// How long anything the test waits for may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// A bound PUSH socket on a free loopback port: the detector's DCU.
struct Detector {
    socket: zmq::Socket,
    endpoint: String,
    _context: zmq::Context,
}

impl Detector {
    fn bind() -> Detector {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::PUSH).unwrap();
        socket.set_linger(5000).unwrap();
        // A send waits for the daemon's socket to connect (and take the message), bounded.
        socket.set_sndtimeo(DEADLINE.as_millis() as i32).unwrap();
        socket.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = socket.get_last_endpoint().unwrap().unwrap();
        Detector {
            socket,
            endpoint,
            _context: context,
        }
    }

    fn send(&self, msg: &Message<'_>) {
        self.send_as(msg, None);
    }

    /// Send `msg`, with the fan's keys for `rank` added when given.
    fn send_as(&self, msg: &Message<'_>, rank: Option<RankKeys>) {
        let mut bytes = Vec::new();
        detflow_stream2::encode(msg, &mut bytes);
        if let Some(keys) = rank {
            let mut with_keys = Vec::new();
            keys.add_to(&bytes, &mut with_keys).unwrap();
            bytes = with_keys;
        }
        self.socket
            .send(bytes, 0)
            .expect("the daemon takes the message in time");
    }

    /// Send a series of `images` images, 2 channels of bslz4; the chunks sent, by image and
    /// channel.
    fn send_series(&self, series: &Series<'_>, images: u64) -> Vec<Vec<Vec<u8>>> {
        self.send_share(series, images, None)
    }

    /// Send what `detflow fan` sends `rank` of a series of `images` (its start and end with
    /// the rank keys, its images only), or the whole series; the chunks sent, in order.
    fn send_share(
        &self,
        series: &Series<'_>,
        images: u64,
        rank: Option<RankKeys>,
    ) -> Vec<Vec<Vec<u8>>> {
        let channels = vec!["threshold_1", "threshold_2"];
        let start = Message::Start(Start {
            series: *series,
            channels: channels.clone(),
            image_size_x: Some(16),
            image_size_y: Some(8),
            image_dtype: Some(PixelType::U16),
            number_of_images: Some(images),
            count_time: Some(0.001),
            frame_time: Some(0.002),
            detector_description: Some("Dectris EIGER2 Si 500K"),
            detector_serial_number: Some("E-02-0042"),
            threshold_energy: vec![("threshold_1", 6000.0), ("threshold_2", 9000.0)],
            ..Start::default()
        });
        self.send_as(&start, rank);
        let mut compressor = Codec::BitshuffleLz4.compressor(PixelType::U16);
        let mine = |i: &u64| rank.is_none_or(|r| r.deal.rank_of(*i) == r.rank);
        let ids: Vec<u64> = (0..images).filter(mine).collect();
        let sent: Vec<Vec<Vec<u8>>> = ids
            .iter()
            .map(|&i| {
                (0..channels.len())
                    .map(|c| {
                        let mut chunk = Vec::new();
                        compressor.compress(&pixels(series.id, i, c), &mut chunk);
                        chunk
                    })
                    .collect()
            })
            .collect();
        for (&i, chunks) in ids.iter().zip(&sent) {
            let data = chunks
                .iter()
                .zip(&channels)
                .map(|(chunk, name)| {
                    let payload = Payload::Compressed {
                        compression: Compression::Bslz4,
                        elem_size: 2,
                        bytes: chunk,
                    };
                    let array = MultiDimArray {
                        dims: [8, 16],
                        array: TypedArray { tag: 69, payload },
                    };
                    (*name, array)
                })
                .collect();
            self.send(&Message::Image(Image {
                series: *series,
                image_id: i,
                start_time: Some(Rational {
                    numerator: i * 100_000,
                    denominator: 50_000_000,
                }),
                data,
                ..Image::default()
            }));
        }
        self.send_as(&Message::End(End { series: *series }), rank);
        sent
    }
}

/// The pixels of series `s`, image `i`, channel `c`: 16x8 u16, distinct for each.
fn pixels(s: u64, i: u64, c: usize) -> Vec<u8> {
    (0..16 * 8u32)
        .flat_map(|p| {
            ((p * 7 + s as u32 * 17 + i as u32 * 131 + c as u32 * 1009) as u16).to_le_bytes()
        })
        .collect()
}

/// The daemon, killed when dropped (a test that fails still cleans up).
struct Daemon {
    /// `None` once [`Daemon::terminate`] took it.
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Daemon {
    /// Start `detflow serve` on a port of its own (any free one, read from its `ready` log
    /// line as it is written) with `args`.
    fn start(dir: &Path, args: &[&str]) -> Daemon {
        let log = dir.join("daemon.log");
        let mut child = common::detflow()
            .arg("serve")
            .args(["--ca-port", "0", "--preview-rate", "2"])
            .args(args)
            .env("EPICS_CAS_INTF_ADDR_LIST", "127.0.0.1")
            .env("EPICS_CAS_BEACON_ADDR_LIST", "127.0.0.1")
            .env("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("detflow serve starts");
        // Every line goes to the log file; the port is sent as soon as the line says it.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let mut file = std::fs::File::create(&log).unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let _ = writeln!(file, "{line}");
                if let Some(rest) = line.split(" on port ").nth(1) {
                    let port = rest.split(|c: char| !c.is_ascii_digit()).next();
                    let _ = tx.send(port.and_then(|p| p.parse::<u16>().ok()));
                }
            }
        });
        let port = rx.recv_timeout(DEADLINE).ok().flatten();
        let daemon = Daemon {
            child: Some(child),
            port: port.unwrap_or(0),
            log,
        };
        assert!(
            daemon.port != 0,
            "the daemon did not say it was ready:\n{}",
            daemon.log()
        );
        daemon
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status (within the deadline).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx.recv_timeout(DEADLINE);
        status
            .unwrap_or_else(|_| panic!("no exit after SIGTERM:\n{}", self.log()))
            .unwrap()
    }

    fn client(&self) -> Client {
        Client::connect(self.addr(), self.log.clone())
    }
}

/// Every channel of every image in `file` is the chunk sent, byte for byte.
fn assert_chunks_sent(file: &str, sent: &[Vec<Vec<u8>>]) {
    let f = hdf5::File::open(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    for (c, name) in ["/entry/data/data", "/entry/data/threshold_2"]
        .iter()
        .enumerate()
    {
        let ds = f.dataset(name).unwrap();
        assert_eq!(ds.shape(), [sent.len(), 8, 16], "{file} {name}");
        for (i, chunks) in sent.iter().enumerate() {
            let mut chunk = Vec::new();
            detflow_writer::read_chunk(&ds, &[i as u64, 0, 0], &mut chunk).unwrap();
            assert_eq!(chunk, chunks[c], "{file} {name} image {i}");
        }
    }
    let present: Vec<u8> = f
        .dataset("/entry/data/image_present")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(present, vec![1; sent.len()], "{file}");
}

#[test]
fn each_series_sent_while_capture_is_on_is_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let detector = Detector::bind();
    // Started as something else than the series will be: the readbacks must follow it.
    let mut d = Daemon::start(
        dir.path(),
        &[
            "--data-root",
            root,
            "--size",
            "64x48",
            "--dtype",
            "u8",
            "--backend",
            "stream2",
            "--stream2-connect",
            &detector.endpoint,
        ],
    );
    let mut c = d.client();
    assert_eq!(c.text("cam1:Manufacturer_RBV"), "DECTRIS Stream V2");
    // The detector's chunks are passed through; a codec set decodes them, `auto` goes back.
    assert_eq!(c.text("HDF1:Codec_RBV"), "auto");
    c.put("HDF1:Compression", num(3.0));
    assert_eq!(c.text("HDF1:Codec_RBV"), "");
    c.put("HDF1:Codec", text("auto"));
    assert_eq!(c.text("HDF1:Codec_RBV"), "auto");
    c.put("HDF1:FilePath", text(root));
    c.put("HDF1:FileName", text("eiger"));
    c.put("HDF1:FileTemplate", text("%s%s_%3.3d.h5"));
    c.put("HDF1:FileNumber", num(3.0));
    c.put("HDF1:AutoIncrement", num(1.0));
    c.put("HDF1:FileWriteMode", num(2.0));
    c.put("HDF1:NumCapture", num(0.0));
    // Acquire's put-callback completes once the series' images are all written or passed
    // by (a capture armed before that waits for the next series).
    c.put("cam1:WaitForPlugins", num(1.0));

    // Capture = 1 arms the plugin; Acquire = 1 waits for the next series.
    let capture = c.put_nowait("HDF1:Capture", &num(1.0));
    let acquire = c.put_nowait("cam1:Acquire", &num(1.0));
    assert_eq!(c.num("HDF1:Capture_RBV"), 1.0);
    assert_eq!(c.num("cam1:Acquire_RBV"), 1.0);
    let first = Series {
        id: 1,
        unique_id: "series-one",
    };
    let sent = detector.send_series(&first, 5);
    c.succeeded(capture);
    c.succeeded(acquire);
    let file = format!("{root}/eiger_003.h5");
    assert_eq!(c.text("HDF1:FullFileName_RBV"), file);
    assert_eq!(c.num("HDF1:NumCaptured_RBV"), 5.0);
    assert_eq!(c.num("HDF1:FileNumber_RBV"), 4.0, "AutoIncrement");
    assert_eq!(c.num("HDF1:Capture_RBV"), 0.0);
    assert_eq!(c.num("cam1:Acquire_RBV"), 0.0);
    assert_eq!(c.text("cam1:DetectorState_RBV"), "Idle");
    for (pv, value) in [
        ("cam1:SizeX_RBV", 16.0),
        ("cam1:SizeY_RBV", 8.0),
        ("cam1:ArraySizeX_RBV", 16.0),
        ("cam1:ArraySizeY_RBV", 8.0),
        ("HDF1:ArraySize0_RBV", 16.0),
        ("cam1:AcquireTime_RBV", 0.001),
        ("cam1:AcquirePeriod_RBV", 0.002),
        ("cam1:NumImages_RBV", 5.0),
        ("cam1:NumImagesCounter_RBV", 5.0),
    ] {
        assert_eq!(c.num(pv), value, "{pv}");
    }
    assert_eq!(c.text("cam1:DataType_RBV"), "UInt16");
    assert_eq!(c.text("cam1:Model_RBV"), "Dectris EIGER2 Si 500K");
    assert_eq!(c.text("cam1:SerialNumber_RBV"), "E-02-0042");
    assert_chunks_sent(&file, &sent);

    // Capture = 0: the next series is received (Acquire follows it) and not written.
    let counter = c.num("cam1:ArrayCounter_RBV");
    let acquire = c.put_nowait("cam1:Acquire", &num(1.0));
    let skipped = Series {
        id: 2,
        unique_id: "series-two",
    };
    detector.send_series(&skipped, 3);
    c.succeeded(acquire);
    assert_eq!(c.num("cam1:ArrayCounter_RBV"), counter + 3.0);
    assert_eq!(c.num("cam1:NumImages_RBV"), 3.0);
    assert!(!Path::new(&format!("{root}/eiger_004.h5")).exists());
    assert_eq!(c.text("HDF1:FullFileName_RBV"), file);

    // Capture = 1 again: the next series goes to the next file number.
    let capture = c.put_nowait("HDF1:Capture", &num(1.0));
    assert_eq!(c.num("HDF1:Capture_RBV"), 1.0);
    let third = Series {
        id: 3,
        unique_id: "series-three",
    };
    // Junk between series is skipped (and logged); the daemon goes on.
    detector
        .socket
        .send(&[0xd9, 0xd9, 0xf7, 0xa1, 0xff][..], 0)
        .unwrap();
    let sent = detector.send_series(&third, 4);
    c.succeeded(capture);
    let file = format!("{root}/eiger_004.h5");
    assert_eq!(c.text("HDF1:FullFileName_RBV"), file);
    assert_eq!(c.num("HDF1:NumCaptured_RBV"), 4.0);
    assert_eq!(c.num("HDF1:FileNumber_RBV"), 5.0);
    assert_chunks_sent(&file, &sent);
    assert_eq!(c.num("cam1:DroppedFrames_RBV"), 0.0, "{}", d.log());

    // Behind `detflow fan`, as rank 2 of 3 in blocks of 2: its share of 13 images (4, 5, 10,
    // 11) in a file named with the rank, in order.
    let capture = c.put_nowait("HDF1:Capture", &num(1.0));
    assert_eq!(c.num("HDF1:Capture_RBV"), 1.0);
    let fourth = Series {
        id: 4,
        unique_id: "series-four",
    };
    let keys = RankKeys::new(2, detflow_hal::Deal::new(3, 2).unwrap());
    let sent = detector.send_share(&fourth, 13, keys);
    assert_eq!(sent.len(), 4);
    c.succeeded(capture);
    let file = format!("{root}/eiger_r2_005.h5");
    assert_eq!(c.text("HDF1:FullFileName_RBV"), file);
    assert_eq!(c.num("HDF1:NumCaptured_RBV"), 4.0);
    assert_eq!(c.num("cam1:NumImages_RBV"), 4.0, "the rank's share");
    assert_chunks_sent(&file, &sent);
    let ids: Vec<u64> = hdf5::File::open(&file)
        .unwrap()
        .dataset("/entry/instrument/detector/detectorSpecific/image_id")
        .unwrap()
        .read_raw()
        .unwrap();
    assert_eq!(ids, [4, 5, 10, 11]);
    assert_eq!(c.num("cam1:DroppedFrames_RBV"), 0.0, "{}", d.log());

    // SIGTERM while it waits for the next series: the listener stops, the daemon exits 0.
    let status = d.terminate();
    assert!(status.success(), "{status:?}\n{}", d.log());
}
