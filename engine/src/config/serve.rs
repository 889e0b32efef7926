//! `[serve]`: the daemon's own settings (`detflow serve`): its PV prefix, where it may write,
//! and how Channel Access clients reach it. `detflow acquire` reads the table and ignores it.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, bad};

/// The most `image1:ArrayData` updates a second.
pub const MAX_PREVIEW_RATE: f64 = 1000.0;

/// `detflow serve`: the IOC's prefix, where it may write, how it is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSettings {
    /// PV prefix.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: String,
    /// Directories files may be written under; empty: the current directory. The flag
    /// `--data-root` adds to the file's list.
    #[arg(skip)]
    pub data_roots: Vec<PathBuf>,
    /// Channel Access port; 0 for any free port (the `ready` log line says which).
    /// [default: EPICS_CAS_SERVER_PORT, EPICS_CA_SERVER_PORT or 5064]
    #[arg(long, value_name = "PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_port: Option<u16>,
    /// The IPv4 interface to serve on.
    #[arg(long, value_name = "IP")]
    pub interface: Ipv4Addr,
    /// Most image1:ArrayData updates per second, up to 1000; 0 for none.
    #[arg(long, value_name = "HZ")]
    pub preview_rate: f64,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            prefix: "ad:".into(),
            data_roots: Vec::new(),
            ca_port: None,
            interface: Ipv4Addr::LOCALHOST,
            preview_rate: 5.0,
        }
    }
}

impl ServeSettings {
    /// Check the prefix and the preview rate.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return Err(bad(
                "prefix",
                &self.prefix,
                "expected a non-empty PV prefix without spaces",
            ));
        }
        if !(0.0..=MAX_PREVIEW_RATE).contains(&self.preview_rate) {
            return Err(bad(
                "preview-rate",
                self.preview_rate,
                format!("expected updates per second from 0 to {MAX_PREVIEW_RATE}"),
            ));
        }
        Ok(())
    }
}
