//! Property tests of the TOML config (`--config`, `serve --config`): any document is read or
//! refused without a panic, and a bad value is refused naming its key. Bounded cases.

use detflow_engine::Config;
use proptest::prelude::*;

const CASES: u32 = 256;

/// Every key of the tables, with the settings an error about it may name (the CLI flag
/// spelling of the key, or a setting it decides, such as write_mode deciding capture).
const KEYS: &[(&str, &str, &[&str])] = &[
    ("detector", "size", &["size"]),
    ("detector", "dtype", &["dtype"]),
    ("detector", "mode", &["mode"]),
    ("detector", "frames", &["frames", "capture"]),
    ("detector", "exposure", &["exposure"]),
    ("detector", "period", &["period"]),
    ("detector", "seed", &[]),
    ("backend", "backend", &["backend", "replay", "udp-listen"]),
    ("backend", "replay", &["replay"]),
    ("backend", "udp_listen", &["udp-listen"]),
    ("backend", "udp_incomplete", &["udp-incomplete"]),
    ("backend", "fifo_depth", &["fifo-depth"]),
    ("backend", "fault_nack", &["fault-nack"]),
    ("backend", "fault_bus_timeout", &["fault-bus-timeout"]),
    ("backend", "fault_drop", &["fault-drop"]),
    ("backend", "fault_corrupt", &["fault-corrupt"]),
    ("backend", "fault_overrun", &["fault-overrun"]),
    ("ring", "slots", &["ring-slots"]),
    ("ring", "policy", &["ring-policy"]),
    ("ring", "shm", &["ring-shm"]),
    ("writer", "name", &["name", "template"]),
    ("writer", "number", &["number"]),
    ("writer", "auto_increment", &[]),
    ("writer", "template", &["template"]),
    ("writer", "codec", &["codec"]),
    ("writer", "workers", &["workers"]),
    ("writer", "write_mode", &["write-mode", "capture"]),
    ("writer", "capture", &["capture"]),
    ("writer", "frames_per_file", &[]),
    ("writer", "lazy_open", &[]),
    ("writer", "temp_suffix", &["temp-suffix"]),
    ("writer", "overwrite", &[]),
    ("writer", "swmr", &[]),
    ("writer", "flush", &["flush"]),
    ("writer", "flush_interval", &["flush-interval"]),
    ("writer", "no_flush", &["flush-interval", "flush"]),
    ("writer", "attributes", &[]),
    ("writer", "performance", &[]),
    ("writer", "create_dirs", &[]),
    ("writer", "refs", &["refs"]),
    ("writer", "ref_pattern", &["ref-pattern"]),
    ("writer", "vds", &["vds"]),
    ("serve", "prefix", &[]),
    ("serve", "interface", &[]),
    ("serve", "preview_rate", &[]),
];

/// A TOML value of any type, with the edge values of each.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        proptest::sample::select(vec![
            "0",
            "-1",
            "1",
            "65536",
            "65537",
            "4294967296",
            "9223372036854775807",
            "0.0",
            "-0.5",
            "1e300",
            "nan",
            "-inf",
            "inf",
            "true",
            "false",
            "\"\"",
            "\"%n\"",
            "\"0x0\"",
            "\"8193x2\"",
            "\"4x4\"",
            "\"u64\"",
            "\"capture\"",
            "\"single\"",
            "\"a/b\"",
            "\"deflate:10\"",
            "\"blosc:x\"",
            "\"udp\"",
            "\"replay\"",
            "\"sim\"",
            "\"127.0.0.1:9000\"",
            "\"flag\"",
            "\"h5file:///tmp/p_{index}.h5\"",
            "[]",
            "[1, 2]",
            "{}",
            "{ a = 1 }",
            "1979-05-27",
            "\"\\u0000\"",
        ])
        .prop_map(str::to_owned),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        "[a-z0-9:%x ./_-]{0,12}".prop_map(|s| format!("{s:?}")),
    ]
}

/// A document: tables and keys, known and unknown, with values of any type, and noise.
fn toml_document() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        4 => (0..KEYS.len(), toml_value()).prop_map(|(k, v)| format!("{} = {v}\n", KEYS[k].1)),
        2 => proptest::sample::select(vec!["detector", "backend", "ring", "writer", "serve", "other"])
            .prop_map(|t| format!("[{t}]\n")),
        1 => "\\PC{0,12}".prop_map(|s| format!("{s}\n")),
        1 => proptest::sample::select(vec!["[writer]\n[writer]\n", "x.y = 1\n", "= 1\n",
            "[[ring]]\n", "frames = 1\nframes = 2\n"]).prop_map(str::to_owned),
    ];
    proptest::collection::vec(line, 0..10).prop_map(|v| v.concat())
}

/// Read `text` as the config file; validate what reads, writing only into a temporary
/// directory.
fn read_and_validate(text: &str) -> Result<Result<(), detflow_engine::ConfigError>, String> {
    let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config;
    config.writer.path = dir.path().to_string_lossy().into_owned();
    Ok(config.validate().map(|_| ()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Any document is read or refused, and what is read is validated or refused, without
    /// a panic.
    #[test]
    fn any_document_is_read_or_refused_without_a_panic(text in toml_document()) {
        let _ = read_and_validate(&text);
    }

    /// One key with any value: the document is read and validated, or refused with a
    /// message that names the key (TOML type errors) or its setting (validation).
    #[test]
    fn a_bad_value_is_refused_naming_its_key(k in 0..KEYS.len(), value in toml_value()) {
        let (table, key, settings) = KEYS[k];
        let text = format!("[{table}]\n{key} = {value}\n");
        match read_and_validate(&text) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                prop_assert!(
                    settings.contains(&e.setting),
                    "{}: refused as {:?}: {}", text, e.setting, e
                );
                let start = format!("invalid {}", e.setting);
                prop_assert!(e.to_string().starts_with(&start), "{}", e);
            }
            Err(message) => prop_assert!(
                message.contains(key),
                "{}: the message does not name {:?}: {}", text, key, message
            ),
        }
    }
}
