//! The file plugin (NDFile + NDFileHDF5): data roots, the codec its PVs name (stored in the
//! config's `writer.codec`), and captures opened by `Capture = 1` from the config's writer
//! settings, closed when complete or told.

use super::*;

use detflow_engine::config::CodecSetting;

/// Why a Compression is refused.
const UNSUPPORTED: &str = "not supported; use None, zlib, Blosc, BSLZ4, LZ4, or HDF1:Codec for \
                           bszstd and zstd";

/// HDF1:Codec's name for [`CodecSetting::Auto`].
pub(super) const AUTO: &str = "auto";

/// The PVs that together name the codec.
const CODEC_PVS: [Pv; 5] = [
    Pv::HdfCompression,
    Pv::HdfZLevel,
    Pv::HdfBloscCompressor,
    Pv::HdfBloscLevel,
    Pv::HdfCodec,
];

impl Ioc {
    /// A FilePath made absolute: relative paths are under the first data root.
    pub(super) fn resolve(&self, path: &str) -> PathBuf {
        resolve(&self.opts.data_roots, path)
    }

    /// Why `path` may not be written, if it may not: outside every data root (after `..`
    /// and symbolic links are resolved, as far as the path exists).
    pub(super) fn outside_roots(&self, path: &Path) -> Option<String> {
        self.opts.data_roots.check(path).err().map(|_| {
            format!(
                "FilePath {:?} is outside the data roots ({})",
                path.display().to_string(),
                self.opts.data_roots
            )
        })
    }

    /// Why the capture `settings` describe may not be written, if it may not: the first
    /// file's full name (FilePath, FileName, FileNumber and FileTemplate, then TempSuffix)
    /// leads outside every data root. The message names the PV that takes it out. The writer
    /// checks every file again as it creates it, so a link swapped in later is caught too.
    fn file_outside_roots(&self, settings: &CaptureSettings) -> Option<String> {
        let mut naming = settings.naming.clone();
        naming.path =
            detflow_writer::naming::expand_path_time(&naming.path, std::time::SystemTime::now())
                .ok()?;
        let name = naming.next_name();
        let mut temp = name.clone().into_os_string();
        temp.push(&settings.temp_suffix);
        let e = [name, PathBuf::from(temp)]
            .iter()
            .find_map(|p| self.opts.data_roots.check(p).err())?;
        let (pv, value) = if settings.temp_suffix.contains('/') {
            (Pv::HdfTempSuffix, settings.temp_suffix.clone())
        } else if settings.naming.name.contains('/') {
            (Pv::HdfFileName, settings.naming.name.clone())
        } else {
            (Pv::HdfFileTemplate, settings.naming.template.to_string())
        };
        Some(format!(
            "{pv} {value:?} makes {:?}, which resolves to {:?}, outside the data roots ({})",
            e.path.display().to_string(),
            e.resolved.display().to_string(),
            e.roots
        ))
    }

    /// Set FilePathExists_RBV and WriteMessage for `path`; with `create`, make the
    /// directories CreateDirectory allows (inside a data root only).
    pub(super) fn check_file_path(&self, path: &str, create: bool) -> bool {
        if let Some(why) = self.outside_roots(Path::new(path)) {
            self.set(Pv::HdfFilePathExistsRbv, 0);
            self.set_text(Pv::HdfWriteMessage, &why);
            self.set(Pv::HdfWriteStatus, 1);
            return false;
        }
        let depth = self.int(Pv::HdfCreateDirectoryRbv) as i32;
        if create && depth != 0 && !Path::new(path).is_dir() {
            if let Err(e) =
                detflow_writer::naming::create_directories(path, depth, &self.opts.data_roots)
            {
                let why =
                    format!("FilePath {path:?}: cannot create it (CreateDirectory {depth}): {e}");
                self.set_text(Pv::HdfWriteMessage, &why);
            }
        }
        let exists = Path::new(path).is_dir();
        self.set(Pv::HdfFilePathExistsRbv, i32::from(exists));
        if exists {
            self.set_text(Pv::HdfWriteMessage, "");
            self.set(Pv::HdfWriteStatus, 0);
        } else {
            self.set_text(
                Pv::HdfWriteMessage,
                &format!("FilePath {path:?} does not exist"),
            );
        }
        exists
    }

    /// FilePath: resolved under the first data root, stored, echoed with a slash, and
    /// checked (FilePathExists_RBV, WriteMessage); CreateDirectory makes what it allows.
    pub(super) fn set_file_path(&self, text: &str) {
        let path = with_slash(&self.resolve(text).to_string_lossy());
        self.config.lock().unwrap().writer.path = path.clone();
        self.set_text(Pv::HdfFilePathRbv, &path);
        self.check_file_path(&path, true);
    }

    /// For a write to one of the codec's PVs (Compression, ZLevel, BloscCompressor,
    /// BloscLevel, our HDF1:Codec): the codec they name with it, each value checked by the
    /// codec's own parser; HDF1:Codec `auto` writes frames as they arrive (a detector's
    /// compressed images passed through). `None` for any other PV.
    pub(super) fn codec_setting(
        &self,
        pv: Pv,
        value: &Value,
    ) -> Option<Result<CodecSetting, String>> {
        if !CODEC_PVS.contains(&pv) {
            return None;
        }
        if pv == Pv::HdfCodec && value.as_text().is_some_and(|t| t.trim() == AUTO) {
            return Some(Ok(CodecSetting::Auto));
        }
        let parse = |text: String| text.parse::<Codec>().map_err(|e| e.to_string());
        let checked = match pv {
            Pv::HdfZLevel => {
                settings::whole(value, 0, 9).and_then(|n| parse(format!("deflate:{n}")))
            }
            Pv::HdfBloscLevel => {
                settings::whole(value, 0, 9).and_then(|n| parse(format!("blosc:blosclz:{n}")))
            }
            Pv::HdfBloscCompressor => parse(format!("blosc:{}:5", settings::shown(pv, value))),
            Pv::HdfCompression if !matches!(value.get_f64(0).unwrap_or(0.0) as i64, 0 | 3..=6) => {
                Err(UNSUPPORTED.into())
            }
            _ => Ok(Codec::None),
        };
        Some(
            checked
                .and_then(|_| self.codec_with(pv, value))
                .map(CodecSetting::Is),
        )
    }

    /// The codec the plugin's Compression (or our HDF1:Codec) names, with `written` =
    /// `value` and the other PVs as they are.
    fn codec_with(&self, written: Pv, value: &Value) -> Result<Codec, String> {
        let int = |pv: Pv| match pv == written {
            true => value.get_f64(0).unwrap_or(0.0) as i64,
            false => self.int(pv.readback().unwrap_or(pv)),
        };
        let ours = match written {
            Pv::HdfCodec => value.as_text().unwrap_or_default(),
            // `auto` gives way to the areaDetector PV written.
            _ => Some(self.text(Pv::HdfCodecRbv))
                .filter(|t| t != AUTO)
                .unwrap_or_default(),
        };
        if !ours.is_empty() {
            return ours
                .parse()
                .map_err(|e: detflow_writer::CodecError| e.to_string());
        }
        let level = |pv: Pv| int(pv).clamp(0, 9) as u8;
        Ok(match int(Pv::HdfCompression) {
            0 => Codec::None,
            3 => Codec::Deflate {
                level: level(Pv::HdfZLevel),
            },
            4 => {
                let name = pvs::BLOSC_COMPRESSORS
                    .get(int(Pv::HdfBloscCompressor) as usize)
                    .copied()
                    .unwrap_or("blosclz");
                format!("blosc:{name}:{}", level(Pv::HdfBloscLevel))
                    .parse()
                    .map_err(|e: detflow_writer::CodecError| e.to_string())?
            }
            5 => Codec::BitshuffleLz4,
            6 => Codec::Lz4,
            _ => return Err(UNSUPPORTED.into()),
        })
    }

    /// Post the codec's PVs for `codec`: Compression, or our HDF1:Codec for the codecs it
    /// cannot name, and the levels (zlib's 6 and blosc's 5 unless the codec says).
    pub(super) fn post_codec(&self, codec: Codec) {
        let (compression, text) = match codec {
            Codec::None => (0, String::new()),
            Codec::Deflate { .. } => (3, String::new()),
            Codec::Blosc { .. } => (4, String::new()),
            Codec::BitshuffleLz4 => (5, String::new()),
            Codec::Lz4 => (6, String::new()),
            other => (0, other.to_string()),
        };
        self.set_both(Pv::HdfCompression, Value::from(compression));
        self.set_text(Pv::HdfCodec, &text);
        self.set_text(Pv::HdfCodecRbv, &text);
        let (mut zlevel, mut blosc_level, mut compressor) = (6, 5, 0);
        match codec {
            Codec::Deflate { level } => zlevel = level.into(),
            Codec::Blosc {
                compressor: c,
                level,
            } => {
                blosc_level = level.into();
                compressor = pvs::BLOSC_COMPRESSORS
                    .iter()
                    .position(|n| *n == c.name())
                    .unwrap_or(0) as i32;
            }
            _ => {}
        }
        self.set_both(Pv::HdfZLevel, Value::from(zlevel));
        self.set_both(Pv::HdfBloscLevel, Value::from(blosc_level));
        self.set_both(Pv::HdfBloscCompressor, Value::from(compressor));
    }

    /// The capture the plugin opens: the config's writer settings, as `detflow acquire`
    /// reads them, under the daemon's data roots.
    pub(super) fn capture_settings(&self) -> CaptureSettings {
        let c = self.config.lock().unwrap();
        let w = &c.writer;
        w.capture_settings(
            w.write_mode,
            w.capture.unwrap_or(0),
            self.opts.data_roots.clone(),
        )
    }

    pub(super) fn capture(
        self: &Arc<Self>,
        on: bool,
        req: &WriteRequest,
    ) -> Result<WriteReply, Refusal> {
        if !on {
            // Done when the files are closed: now, or after the writer's frame (the waiter
            // is in place before the close, so that its end cannot pass it by).
            let reply = wait_in(&self.capture_waiters, req);
            self.end_capture(None);
            return Ok(reply);
        }
        if self.plugin.is_open() {
            self.set(Pv::HdfCaptureRbv, 1);
            return Ok(wait_in(&self.capture_waiters, req));
        }
        self.open_capture()
            .map_err(|why| format!("Capture refused: {why}"))?;
        self.set(Pv::HdfCaptureRbv, 1);
        Ok(wait_in(&self.capture_waiters, req))
    }

    /// Open a capture with the plugin's settings (inside the data roots only) and post its
    /// readbacks.
    pub(super) fn open_capture(&self) -> Result<(), Refusal> {
        let settings = self.capture_settings();
        let path = settings.naming.path.clone();
        if let Some(why) = self.outside_roots(Path::new(&path)) {
            self.set(Pv::HdfFilePathExistsRbv, 0);
            self.set(Pv::HdfWriteStatus, 1);
            return Err(why);
        }
        if let Some(why) = self.file_outside_roots(&settings) {
            self.set(Pv::HdfWriteStatus, 1);
            self.set_text(Pv::HdfWriteMessage, &why);
            return Err(why);
        }
        if self.series_mode {
            return self.arm_capture(settings);
        }
        let shape = self.frame_shape()?;
        let acq = self.config.lock().unwrap().detector.acquisition(1, 1);
        let session = CaptureSession::start(settings, geometry(&acq, shape)).map_err(|e| {
            self.set(Pv::HdfWriteStatus, 1);
            e.to_string()
        })?;
        let status = session.status().clone();
        if let Err(session) = self.plugin.open(session) {
            // Another client's Capture = 1 came first: this one is not needed.
            let _ = session.finish();
            return Err("a capture is open already".into());
        }
        tracing::info!(file = %status.full_file_name.display(), "capture started");
        self.set(Pv::HdfNumCapturedRbv, 0);
        self.set(Pv::HdfWriteStatus, 0);
        self.set_text(Pv::HdfWriteMessage, &status.write_message);
        self.post_file_status(&status);
        self.set(
            Pv::HdfSWMRActiveRbv,
            i32::from(self.flag(Pv::HdfSWMRModeRbv)),
        );
        Ok(())
    }

    /// Close the open capture (Capture = 0, or shutting down). While a run's writer holds
    /// it (for one frame), the writer closes it right after and the engine tells
    /// `capture_ended`. Either way, the capture's put-callbacks complete once its files are
    /// closed.
    pub(super) fn end_capture(&self, error: Option<String>) {
        match self.plugin.close(error) {
            Closed::Now(end) => {
                tracing::info!(
                    file = %end.status.full_file_name.display(),
                    frames = end.status.num_captured,
                    "capture closed"
                );
                self.capture_done(&end.status, end.error.as_deref());
            }
            Closed::Later => {}
            Closed::NotOpen | Closed::Disarmed => {
                self.set(Pv::HdfCapture, 0);
                self.set(Pv::HdfCaptureRbv, 0);
                complete(&self.capture_waiters, None);
            }
        }
    }

    /// A capture ended: readbacks, Capture falls, waiting puts complete.
    pub(super) fn capture_done(&self, status: &FileStatus, error: Option<&str>) {
        self.post_file_status(status);
        self.set(
            Pv::HdfNumCapturedRbv,
            status.num_captured.min(i32::MAX as u64) as i32,
        );
        match error {
            Some(e) => {
                self.set(Pv::HdfWriteStatus, 1);
                self.set_text(Pv::HdfWriteMessage, e);
            }
            None => {
                self.set(Pv::HdfWriteStatus, i32::from(!status.write_ok));
                self.set_text(Pv::HdfWriteMessage, &status.write_message);
            }
        }
        self.set(Pv::HdfSWMRActiveRbv, 0);
        self.set(Pv::HdfCapture, 0);
        self.set(Pv::HdfCaptureRbv, 0);
        complete(&self.capture_waiters, error.map(|_| Eca::PutFail));
    }

    /// FullFileName and FileNumber, posted (and FileNumber stored) when they change.
    pub(super) fn post_file_status(&self, status: &FileStatus) {
        {
            let mut last = self.last_full_name.lock().unwrap();
            if *last != status.full_file_name && !status.full_file_name.as_os_str().is_empty() {
                last.clone_from(&status.full_file_name);
                self.set_text(
                    Pv::HdfFullFileNameRbv,
                    &status.full_file_name.to_string_lossy(),
                );
            }
        }
        if self.last_number.swap(status.file_number, Ordering::Relaxed) != status.file_number
            || self.int(Pv::HdfFileNumberRbv) != i64::from(status.file_number)
        {
            // The next capture goes on from here (AutoIncrement), as FileNumber says.
            self.config.lock().unwrap().writer.number = status.file_number;
            self.set_both(Pv::HdfFileNumber, Value::from(status.file_number));
        }
    }

    /// FlushNow: done on this thread, or by a run's writer right after its frame.
    pub(super) fn flush_now(&self) {
        if let Flushed::Ended(end) = self.plugin.flush() {
            // The failed flush closed the capture's file: the capture ended with it.
            tracing::info!(
                file = %end.status.full_file_name.display(),
                frames = end.status.num_captured,
                "capture closed"
            );
            self.capture_done(&end.status, end.error.as_deref());
        }
    }
}

/// `path` made absolute: a relative one is under the first of `roots`.
pub(super) fn resolve(roots: &DataRoots, path: &str) -> PathBuf {
    let p = Path::new(path);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        roots.roots()[0].join(p)
    };
    // `.` components say nothing; `..` are kept for the data-root check to resolve.
    p.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// A directory path ending with `/`, as areaDetector's FilePath_RBV.
pub(super) fn with_slash(path: &str) -> String {
    if path.ends_with('/') {
        path.to_owned()
    } else {
        format!("{path}/")
    }
}

/// Data roots that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataRootError {
    /// None was given, and the current directory cannot be read.
    #[error("cannot read the current directory")]
    CurrentDir(#[source] std::io::Error),
    /// A root is not an existing directory.
    #[error("invalid data-root {path:?}")]
    Invalid {
        /// The root, as given.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Check the data roots: each must be an existing directory; returned canonical. None
/// given: the current directory.
pub fn data_roots(roots: &[PathBuf]) -> Result<DataRoots, DataRootError> {
    let roots = if roots.is_empty() {
        vec![std::env::current_dir().map_err(DataRootError::CurrentDir)?]
    } else {
        roots.to_vec()
    };
    for r in &roots {
        DataRoots::new(std::slice::from_ref(r)).map_err(|source| DataRootError::Invalid {
            path: r.display().to_string(),
            source,
        })?;
    }
    DataRoots::new(&roots).map_err(|source| DataRootError::Invalid {
        path: roots[0].display().to_string(),
        source,
    })
}
