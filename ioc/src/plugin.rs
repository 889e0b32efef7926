//! The file plugin (NDFile + NDFileHDF5): data roots, the codec and capture settings its
//! PVs describe, and captures opened by `Capture = 1` and closed when complete or told.

use super::*;

impl Ioc {
    /// A FilePath made absolute: relative paths are under the first data root.
    pub(super) fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.opts.data_roots.roots()[0].join(p)
        };
        // `.` components say nothing; `..` are kept for the data-root check to resolve.
        p.components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
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

    /// The codec the plugin's Compression (or our HDF1:Codec) names.
    pub(super) fn codec(&self) -> Result<Codec, Refusal> {
        let ours = self.text(Pv::HdfCodecRbv);
        if !ours.is_empty() {
            return ours
                .parse()
                .map_err(|e| format!("HDF1:Codec {ours:?}: {e}"));
        }
        let level = |s: Pv| self.int(s).clamp(0, 9) as u8;
        Ok(match self.int(Pv::HdfCompressionRbv) {
            0 => Codec::None,
            3 => Codec::Deflate {
                level: level(Pv::HdfZLevelRbv),
            },
            4 => {
                let name = pvs::BLOSC_COMPRESSORS
                    .get(self.int(Pv::HdfBloscCompressorRbv) as usize)
                    .copied()
                    .unwrap_or("blosclz");
                format!("blosc:{name}:{}", level(Pv::HdfBloscLevelRbv))
                    .parse()
                    .map_err(|e| format!("HDF1:BloscCompressor {name}: {e}"))?
            }
            5 => Codec::BitshuffleLz4,
            6 => Codec::Lz4,
            other => {
                let name = pvs::COMPRESSIONS
                    .get(other as usize)
                    .copied()
                    .unwrap_or("?");
                return Err(format!("HDF1:Compression {name}: not supported"));
            }
        })
    }

    /// The capture settings the plugin's readbacks describe.
    pub(super) fn capture_settings(&self) -> Result<CaptureSettings, Refusal> {
        let w = &self.opts.validated.capture;
        let template: FileTemplate = self
            .text(Pv::HdfFileTemplateRbv)
            .parse()
            .map_err(|e| format!("HDF1:FileTemplate: {e}"))?;
        let mode = match self.int(Pv::HdfFileWriteModeRbv) {
            0 => WriteMode::Single,
            1 => WriteMode::Capture,
            _ => WriteMode::Stream,
        };
        let flush = self.int(Pv::HdfNumFramesFlushRbv).max(0) as u64;
        Ok(CaptureSettings {
            mode,
            num_capture: self.int(Pv::HdfNumCaptureRbv).max(0) as u64,
            frames_per_file: w.frames_per_file,
            lazy_open: self.flag(Pv::HdfLazyOpenRbv),
            naming: FileNaming {
                path: self.text(Pv::HdfFilePathRbv),
                name: self.text(Pv::HdfFileNameRbv),
                number: self.int(Pv::HdfFileNumberRbv) as i32,
                auto_increment: self.flag(Pv::HdfAutoIncrementRbv),
                template,
            },
            create_dirs: self.int(Pv::HdfCreateDirectoryRbv) as i32,
            temp_suffix: self.text(Pv::HdfTempSuffixRbv),
            overwrite: w.overwrite,
            codec: self.codec()?,
            swmr: self.flag(Pv::HdfSWMRModeRbv),
            flush_every: flush,
            flush_interval: w.flush_interval,
            store_attributes: self.flag(Pv::HdfStoreAttrRbv),
            store_performance: self.flag(Pv::HdfStorePerformRbv),
            refs: None,
            ref_pattern: None,
            roots: self.opts.data_roots.clone(),
        })
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
        let path = self.text(Pv::HdfFilePathRbv);
        if let Some(why) = self.outside_roots(Path::new(&path)) {
            self.set(Pv::HdfFilePathExistsRbv, 0);
            self.set(Pv::HdfWriteStatus, 1);
            return Err(why);
        }
        let settings = self.capture_settings()?;
        if let Some(why) = self.file_outside_roots(&settings) {
            self.set(Pv::HdfWriteStatus, 1);
            self.set_text(Pv::HdfWriteMessage, &why);
            return Err(why);
        }
        let shape = self.frame_shape()?;
        let acq = self.acquisition_config()?;
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
            Closed::NotOpen => {
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

    /// FullFileName and FileNumber, posted when they change.
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

/// A directory path ending with `/`, as areaDetector's FilePath_RBV.
pub(super) fn with_slash(path: &str) -> String {
    if path.ends_with('/') {
        path.to_owned()
    } else {
        format!("{path}/")
    }
}

/// Check the data roots: each must be an existing directory; returned canonical. None
/// given: the current directory.
pub fn data_roots(roots: &[PathBuf]) -> anyhow::Result<DataRoots> {
    let roots = if roots.is_empty() {
        vec![std::env::current_dir().context("cannot read the current directory")?]
    } else {
        roots.to_vec()
    };
    for r in &roots {
        DataRoots::new(std::slice::from_ref(r))
            .map_err(|e| anyhow::anyhow!("invalid data-root {:?}: {e}", r.display().to_string()))?;
    }
    Ok(DataRoots::new(&roots)?)
}
