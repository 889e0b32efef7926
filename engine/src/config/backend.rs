//! `[backend]`: where frames come from, and that backend's own settings. [`BackendConfig`] is
//! the typed choice the engine opens; [`BackendKeys`] is how it is written, the same keys in a
//! TOML table and as flags, every one optional, checked against the backend they belong to.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use detflow_sim::FaultRates;
use serde::{Deserialize, Serialize};

use super::value::{Seconds, text};
use super::{ConfigError, bad};
use crate::backend::stream2::SeriesExpect;
use crate::backend::udp::Incomplete;

/// Which backend delivers the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The simulated detector.
    Sim,
    /// The frames of an HDF5 dataset.
    Replay,
    /// A UDP datagram stream.
    Udp,
    /// A DECTRIS Stream V2 detector (CBOR over ZeroMQ).
    Stream2,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sim" => Ok(BackendKind::Sim),
            "replay" => Ok(BackendKind::Replay),
            "udp" => Ok(BackendKind::Udp),
            "stream2" => Ok(BackendKind::Stream2),
            _ => Err("expected one of sim, replay, udp, stream2".into()),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Sim => "sim",
            BackendKind::Replay => "replay",
            BackendKind::Udp => "udp",
            BackendKind::Stream2 => "stream2",
        })
    }
}

/// Where an acquisition's frames come from, with that backend's settings.
///
/// In TOML it is the `[backend]` table: `backend = "sim" | "replay" | "udp"` beside the keys
/// of that backend (the layout `#[serde(tag = "backend")]` gives). It is read through
/// [`BackendKeys`] rather than serde's tagged derive, which buffers the table and so loses
/// the key of a value it refuses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BackendKeys", into = "BackendKeys")]
pub enum BackendConfig {
    /// The simulated detector, its FIFO depth and fault rates.
    Sim {
        /// Frames the FIFO holds before it overruns, 1 to 64.
        fifo_depth: usize,
        /// Injected faults, each a probability from 0 to 1.
        faults: FaultRates,
    },
    /// The frames of an HDF5 dataset.
    Replay {
        /// The file.
        file: PathBuf,
        /// The dataset's path in it.
        dataset: String,
    },
    /// A UDP datagram stream.
    Udp {
        /// Where to receive.
        listen: SocketAddr,
        /// What to do with incomplete frames.
        incomplete: Incomplete,
    },
    /// A DECTRIS Stream V2 detector: one series, from its `start` to its `end`.
    Stream2 {
        /// The detector's ZeroMQ PUSH endpoint to connect to, `tcp://HOST:PORT`.
        connect: String,
        /// Messages the receiving socket queues before the detector side holds or drops
        /// (ZMQ_RCVHWM), 0 for no limit.
        rcvhwm: i32,
        /// A series with no message for this long closes with the images that arrived; also
        /// the wait for its `start`.
        timeout: Seconds,
        /// What the flags given say of the series (size, dtype, frames): a series that
        /// contradicts them is refused. Set by the command line, not kept in TOML.
        expect: SeriesExpect,
    },
}

/// The receive queue of a Stream V2 socket unless told otherwise: 100 images (at an EIGER2
/// 16M's ~0.5 MB per compressed image, 50 MB; the ring holds more).
pub const STREAM2_RCVHWM: i32 = 100;

/// How long a Stream V2 series may be silent unless told otherwise.
pub const STREAM2_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for BackendConfig {
    fn default() -> Self {
        let sim = detflow_sim::SimOptions::default();
        BackendConfig::Sim {
            fifo_depth: sim.fifo_depth,
            faults: sim.faults,
        }
    }
}

impl BackendConfig {
    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendConfig::Sim { .. } => BackendKind::Sim,
            BackendConfig::Replay { .. } => BackendKind::Replay,
            BackendConfig::Udp { .. } => BackendKind::Udp,
            BackendConfig::Stream2 { .. } => BackendKind::Stream2,
        }
    }

    /// Apply keys given on the command line over this backend (the file's, or the default).
    /// A `backend` other than this one starts from that backend's defaults; every other key
    /// must belong to the backend that results.
    pub fn apply(&mut self, flags: BackendKeys) -> Result<(), ConfigError> {
        let mut keys = match flags.backend {
            Some(kind) if kind != self.kind() => BackendKeys {
                backend: Some(kind),
                ..BackendKeys::default()
            },
            _ => BackendKeys::from(self.clone()),
        };
        keys.overlay(flags);
        *self = BackendConfig::try_from(keys)?;
        Ok(())
    }

    /// Check the values: the FIFO depth and fault rates of the simulator, the replayed file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            BackendConfig::Sim { fifo_depth, faults } => detflow_sim::SimOptions {
                fifo_depth: *fifo_depth,
                faults: *faults,
            }
            .validate()
            .map_err(|e| bad(e.setting, e.value, e.reason)),
            BackendConfig::Replay { file, dataset } => {
                if file.is_file() {
                    Ok(())
                } else {
                    Err(bad("replay", replay_source(file, dataset), "no such file"))
                }
            }
            BackendConfig::Udp { .. } => Ok(()),
            BackendConfig::Stream2 {
                connect,
                rcvhwm,
                timeout,
                ..
            } => {
                check_endpoint(connect)?;
                if *rcvhwm < 0 {
                    return Err(bad(
                        "stream2-rcvhwm",
                        rcvhwm,
                        "must be 0 (no limit) or more",
                    ));
                }
                if timeout.is_zero() {
                    return Err(bad("stream2-timeout", timeout, "must be more than 0 s"));
                }
                Ok(())
            }
        }
    }
}

/// A ZeroMQ endpoint a PULL socket can connect to: `tcp://HOST:PORT` or `ipc://PATH`.
fn check_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let refuse = |why| Err(bad("stream2-connect", endpoint, why));
    if let Some(path) = endpoint.strip_prefix("ipc://") {
        return if path.is_empty() {
            refuse("ipc:// needs a path")
        } else {
            Ok(())
        };
    }
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        return refuse("expected tcp://HOST:PORT, for example tcp://127.0.0.1:31001");
    };
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => refuse("expected tcp://HOST:PORT with a port from 1 to 65535"),
    }
}

/// `FILE[::DATASET]`, as `--replay` takes it (the default dataset left out).
fn replay_source(file: &std::path::Path, dataset: &str) -> String {
    if dataset == crate::backend::replay::DEFAULT_DATASET {
        file.display().to_string()
    } else {
        format!("{}::{dataset}", file.display())
    }
}

/// The backend settings as they are written: the `[backend]` table's keys and the flags of the
/// same names. Every key is optional; [`BackendConfig::try_from`] picks the backend (`sim`
/// unless `backend` says otherwise) and refuses a key that belongs to another one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BackendKeys {
    /// Where frames come from: sim (the simulated detector), replay (an HDF5 dataset, see
    /// --replay), udp (a datagram stream, see --udp-listen) or stream2 (a DECTRIS Stream V2
    /// detector, see --stream2-connect).
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// replay: the HDF5 file and 3-D dataset to play, `FILE[::DATASET]` (default dataset:
    /// /entry/data/data), raw or compressed with any codec detflow writes; its frame size
    /// and pixel type replace size and dtype.
    #[arg(long, value_name = "FILE[::DATASET]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
    /// udp: receive on IP:PORT; size and dtype must be what the sender sends.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_listen: Option<SocketAddr>,
    /// udp: a frame with packets missing is dropped (drop) or delivered zero-filled (flag);
    /// either way it is counted as incomplete. [default: drop]
    #[arg(long, value_name = "drop|flag")]
    #[serde(
        with = "text::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub udp_incomplete: Option<Incomplete>,
    /// stream2: the detector's Stream V2 endpoint to connect to (ZeroMQ PULL), e.g.
    /// tcp://DCU:31001. Size, dtype, channels and image count come from the series' start
    /// message.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream2_connect: Option<String>,
    /// stream2: messages the receive socket queues (ZMQ_RCVHWM), 0 for no limit [default: 100]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream2_rcvhwm: Option<i32>,
    /// stream2: seconds without a message after which the series closes with what arrived
    /// (also the wait for its start) [default: 30]
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream2_timeout: Option<Seconds>,
    /// sim: frames the detector's FIFO holds before it overruns (1 to 64).
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fifo_depth: Option<usize>,
    /// sim: inject I2C NACKs with this probability per transaction.
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_nack: Option<f64>,
    /// sim: inject I2C bus timeouts with this probability per transaction.
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_bus_timeout: Option<f64>,
    /// sim: drop frames on the sensor link with this probability.
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_drop: Option<f64>,
    /// sim: corrupt frames (checksum mismatch) with this probability.
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_corrupt: Option<f64>,
    /// sim: lose frames to FIFO overruns with this probability.
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_overrun: Option<f64>,
}

impl BackendKeys {
    /// Each key given in `over` replaces this one's.
    fn overlay(&mut self, over: BackendKeys) {
        self.backend = over.backend.or(self.backend);
        self.replay = over.replay.or(self.replay.take());
        self.udp_listen = over.udp_listen.or(self.udp_listen);
        self.udp_incomplete = over.udp_incomplete.or(self.udp_incomplete);
        self.stream2_connect = over.stream2_connect.or(self.stream2_connect.take());
        self.stream2_rcvhwm = over.stream2_rcvhwm.or(self.stream2_rcvhwm);
        self.stream2_timeout = over.stream2_timeout.or(self.stream2_timeout);
        self.fifo_depth = over.fifo_depth.or(self.fifo_depth);
        self.fault_nack = over.fault_nack.or(self.fault_nack);
        self.fault_bus_timeout = over.fault_bus_timeout.or(self.fault_bus_timeout);
        self.fault_drop = over.fault_drop.or(self.fault_drop);
        self.fault_corrupt = over.fault_corrupt.or(self.fault_corrupt);
        self.fault_overrun = over.fault_overrun.or(self.fault_overrun);
    }

    /// The keys given, each with the backend it belongs to, its flag and its value.
    fn given(&self) -> Vec<(BackendKind, &'static str, String)> {
        use BackendKind::{Replay, Sim, Stream2, Udp};
        fn shown<T: fmt::Display>(v: &Option<T>) -> Option<String> {
            v.as_ref().map(T::to_string)
        }
        [
            (Replay, "replay", shown(&self.replay)),
            (Udp, "udp-listen", shown(&self.udp_listen)),
            (Udp, "udp-incomplete", shown(&self.udp_incomplete)),
            (Stream2, "stream2-connect", shown(&self.stream2_connect)),
            (Stream2, "stream2-rcvhwm", shown(&self.stream2_rcvhwm)),
            (Stream2, "stream2-timeout", shown(&self.stream2_timeout)),
            (Sim, "fifo-depth", shown(&self.fifo_depth)),
            (Sim, "fault-nack", shown(&self.fault_nack)),
            (Sim, "fault-bus-timeout", shown(&self.fault_bus_timeout)),
            (Sim, "fault-drop", shown(&self.fault_drop)),
            (Sim, "fault-corrupt", shown(&self.fault_corrupt)),
            (Sim, "fault-overrun", shown(&self.fault_overrun)),
        ]
        .into_iter()
        .filter_map(|(kind, setting, value)| value.map(|v| (kind, setting, v)))
        .collect()
    }
}

impl TryFrom<BackendKeys> for BackendConfig {
    type Error = ConfigError;

    fn try_from(keys: BackendKeys) -> Result<Self, ConfigError> {
        let kind = keys.backend.unwrap_or(BackendKind::Sim);
        if let Some((owner, setting, value)) = keys.given().into_iter().find(|k| k.0 != kind) {
            return Err(bad(
                setting,
                value,
                format!(
                    "a setting of the {owner} backend, and the backend is {kind}: give \
                     --backend {owner} (TOML: [backend] backend = \"{owner}\" beside {})",
                    setting.replace('-', "_")
                ),
            ));
        }
        Ok(match kind {
            BackendKind::Sim => {
                let detflow_sim::SimOptions { fifo_depth, faults } = Default::default();
                BackendConfig::Sim {
                    fifo_depth: keys.fifo_depth.unwrap_or(fifo_depth),
                    faults: FaultRates {
                        nack: keys.fault_nack.unwrap_or(faults.nack),
                        bus_timeout: keys.fault_bus_timeout.unwrap_or(faults.bus_timeout),
                        drop: keys.fault_drop.unwrap_or(faults.drop),
                        corrupt: keys.fault_corrupt.unwrap_or(faults.corrupt),
                        overrun: keys.fault_overrun.unwrap_or(faults.overrun),
                    },
                }
            }
            BackendKind::Replay => {
                let source = keys.replay.unwrap_or_default();
                if source.is_empty() {
                    return Err(bad(
                        "replay",
                        source,
                        "the replay backend needs FILE[::DATASET] (TOML: [backend] replay)",
                    ));
                }
                let (file, dataset) = crate::backend::replay::parse_source(&source);
                BackendConfig::Replay { file, dataset }
            }
            BackendKind::Udp => BackendConfig::Udp {
                listen: keys.udp_listen.ok_or_else(|| {
                    bad(
                        "udp-listen",
                        "",
                        "the udp backend needs IP:PORT to receive on, for example \
                         127.0.0.1:9000 (TOML: [backend] udp_listen)",
                    )
                })?,
                incomplete: keys.udp_incomplete.unwrap_or_default(),
            },
            BackendKind::Stream2 => BackendConfig::Stream2 {
                connect: keys.stream2_connect.ok_or_else(|| {
                    bad(
                        "stream2-connect",
                        "",
                        "the stream2 backend needs the detector's endpoint, for example \
                         tcp://127.0.0.1:31001 (TOML: [backend] stream2_connect)",
                    )
                })?,
                rcvhwm: keys.stream2_rcvhwm.unwrap_or(STREAM2_RCVHWM),
                timeout: keys.stream2_timeout.unwrap_or(
                    Seconds::new(STREAM2_TIMEOUT.as_secs_f64()).expect("30 s is in range"),
                ),
                expect: SeriesExpect::default(),
            },
        })
    }
}

impl From<BackendConfig> for BackendKeys {
    fn from(b: BackendConfig) -> Self {
        let backend = Some(b.kind());
        match b {
            BackendConfig::Sim { fifo_depth, faults } => BackendKeys {
                backend,
                fifo_depth: Some(fifo_depth),
                fault_nack: Some(faults.nack),
                fault_bus_timeout: Some(faults.bus_timeout),
                fault_drop: Some(faults.drop),
                fault_corrupt: Some(faults.corrupt),
                fault_overrun: Some(faults.overrun),
                ..BackendKeys::default()
            },
            BackendConfig::Replay { file, dataset } => BackendKeys {
                backend,
                replay: Some(replay_source(&file, &dataset)),
                ..BackendKeys::default()
            },
            BackendConfig::Udp { listen, incomplete } => BackendKeys {
                backend,
                udp_listen: Some(listen),
                udp_incomplete: Some(incomplete),
                ..BackendKeys::default()
            },
            BackendConfig::Stream2 {
                connect,
                rcvhwm,
                timeout,
                ..
            } => BackendKeys {
                backend,
                stream2_connect: Some(connect),
                stream2_rcvhwm: Some(rcvhwm),
                stream2_timeout: Some(timeout),
                ..BackendKeys::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BackendConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_table_names_the_backend_beside_its_keys() {
        assert_eq!(parse(""), Ok(BackendConfig::default()));
        assert_eq!(
            parse("fault_drop = 0.5"),
            Ok(BackendConfig::Sim {
                fifo_depth: 16,
                faults: FaultRates {
                    drop: 0.5,
                    ..FaultRates::default()
                }
            })
        );
        assert_eq!(
            parse("backend = \"udp\"\nudp_listen = \"127.0.0.1:9000\"\nudp_incomplete = \"flag\""),
            Ok(BackendConfig::Udp {
                listen: "127.0.0.1:9000".parse().unwrap(),
                incomplete: Incomplete::Flag
            })
        );
        assert_eq!(
            parse("backend = \"replay\"\nreplay = \"/a.h5::/d\""),
            Ok(BackendConfig::Replay {
                file: "/a.h5".into(),
                dataset: "/d".into()
            })
        );
        for b in [
            BackendConfig::default(),
            parse("backend = \"replay\"\nreplay = \"/a.h5::/d\"").unwrap(),
            parse("backend = \"udp\"\nudp_listen = \"127.0.0.1:9000\"").unwrap(),
        ] {
            assert_eq!(parse(&toml::to_string(&b).unwrap()), Ok(b));
        }
    }

    #[test]
    fn a_key_of_another_backend_or_a_missing_one_is_refused_by_name() {
        for (text, names) in [
            (
                "backend = \"udp\"\nfifo_depth = 4",
                ["fifo-depth", "fifo_depth"],
            ),
            ("udp_listen = \"127.0.0.1:1\"", ["udp-listen", "udp_listen"]),
            ("backend = \"udp\"", ["udp-listen", "udp_listen"]),
            ("backend = \"replay\"", ["replay", "replay"]),
            ("backend = \"camera\"", ["camera", "backend"]),
            ("fifo_dept = 3", ["fifo_dept", "fifo_depth"]),
            (
                "udp_incomplete = \"maybe\"",
                ["udp_incomplete", "drop or flag"],
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(names.iter().all(|n| e.contains(n)), "{text}: {e}");
        }
    }

    #[test]
    fn flags_override_the_file_and_a_new_backend_starts_afresh() {
        let mut b: BackendConfig =
            parse("backend = \"udp\"\nudp_listen = \"127.0.0.1:9000\"").unwrap();
        b.apply(BackendKeys {
            udp_incomplete: Some(Incomplete::Flag),
            ..BackendKeys::default()
        })
        .unwrap();
        assert_eq!(
            b,
            BackendConfig::Udp {
                listen: "127.0.0.1:9000".parse().unwrap(),
                incomplete: Incomplete::Flag
            }
        );
        b.apply(BackendKeys {
            backend: Some(BackendKind::Sim),
            fault_drop: Some(0.25),
            ..BackendKeys::default()
        })
        .unwrap();
        assert!(matches!(b, BackendConfig::Sim { faults, .. } if faults.drop == 0.25));
        let e = b
            .apply(BackendKeys {
                udp_listen: Some("127.0.0.1:1".parse().unwrap()),
                ..BackendKeys::default()
            })
            .unwrap_err();
        assert_eq!((e.setting, e.value.as_str()), ("udp-listen", "127.0.0.1:1"));
    }

    #[test]
    fn values_are_checked_by_name() {
        let sim = |f: fn(&mut FaultRates)| {
            let mut faults = FaultRates::default();
            f(&mut faults);
            BackendConfig::Sim {
                fifo_depth: 16,
                faults,
            }
        };
        let e = sim(|f| f.drop = 1.5).validate().unwrap_err();
        assert_eq!((e.setting, e.value.as_str()), ("fault-drop", "1.5"));
        let e = sim(|f| f.nack = f64::NAN).validate().unwrap_err();
        assert_eq!(e.setting, "fault-nack");
        let e = BackendConfig::Sim {
            fifo_depth: 0,
            faults: FaultRates::default(),
        }
        .validate()
        .unwrap_err();
        assert_eq!((e.setting, e.value.as_str()), ("fifo-depth", "0"));
        let e = parse("backend = \"replay\"\nreplay = \"/nonexistent.h5::/d\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid replay \"/nonexistent.h5::/d\": no such file"
        );
    }
}
