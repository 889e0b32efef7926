//! The cam (ADBase + simDetector): its settings as a detector configuration, and the runs
//! that `Acquire` starts, followed until their frames are written.

use super::*;

impl Ioc {
    /// The detector configuration the cam's readbacks describe.
    pub(super) fn acquisition_config(&self) -> Result<AcquisitionConfig, Refusal> {
        let pixel_type = PixelType::from_nd_data_type(self.int(Pv::CamDataTypeRbv) as i32)
            .ok_or("cam1:DataType is not one the detector makes")?;
        let image_mode = match self.int(Pv::CamImageModeRbv) {
            0 => ImageMode::Single,
            1 => ImageMode::Multiple,
            _ => ImageMode::Continuous,
        };
        let seconds = |s: Pv| Duration::from_secs_f64(self.num(s).clamp(0.0, 86_400.0));
        Ok(AcquisitionConfig {
            roi: Roi {
                min_x: self.int(Pv::CamMinXRbv) as u32,
                min_y: self.int(Pv::CamMinYRbv) as u32,
                size_x: self.int(Pv::CamSizeXRbv) as u32,
                size_y: self.int(Pv::CamSizeYRbv) as u32,
            },
            binning: Binning {
                x: self.int(Pv::CamBinXRbv) as u32,
                y: self.int(Pv::CamBinYRbv) as u32,
            },
            pixel_type,
            exposure: seconds(Pv::CamAcquireTimeRbv),
            period: seconds(Pv::CamAcquirePeriodRbv),
            image_mode,
            num_images: self.int(Pv::CamNumImagesRbv).clamp(1, u32::MAX as i64) as u32,
            trigger_mode: TriggerMode::Internal,
        })
    }

    /// The simulation's parameters from the cam's simDetector PVs.
    pub(super) fn sim_params(&self, mode: detflow_sim::SimMode) -> detflow_sim::SimParams {
        let n = |s: Pv| self.num(s);
        let i = |s: Pv| self.int(s) as i32;
        let u = |s: Pv| self.int(s).max(0) as u32;
        detflow_sim::SimParams {
            mode,
            gain: n(Pv::CamGainRbv),
            gain_x: n(Pv::CamGainXRbv),
            gain_y: n(Pv::CamGainYRbv),
            offset: n(Pv::CamOffsetRbv),
            noise: n(Pv::CamNoiseRbv),
            peak_start_x: i(Pv::CamPeakStartXRbv),
            peak_start_y: i(Pv::CamPeakStartYRbv),
            peak_width_x: u(Pv::CamPeakWidthXRbv),
            peak_width_y: u(Pv::CamPeakWidthYRbv),
            peak_num_x: u(Pv::CamPeakNumXRbv),
            peak_num_y: u(Pv::CamPeakNumYRbv),
            peak_step_x: i(Pv::CamPeakStepXRbv),
            peak_step_y: i(Pv::CamPeakStepYRbv),
            peak_variation: n(Pv::CamPeakVariationRbv),
            ..detflow_engine::acquisition::demo_params(
                mode,
                self.opts.validated.sensor,
                PixelType::U16,
            )
        }
    }

    pub(super) fn frame_shape(&self) -> Result<FrameShape, Refusal> {
        let acq = self.acquisition_config()?;
        let (width, height) = acq.output_shape().map_err(|_| {
            format!(
                "the cam's region {}x{} binned {}x{} is empty",
                acq.roi.size_x, acq.roi.size_y, acq.binning.x, acq.binning.y
            )
        })?;
        Ok(FrameShape {
            width,
            height,
            pixel_type: acq.pixel_type,
            color_mode: ColorMode::Mono,
        })
    }

    /// Frames the run asks for (0: until stopped).
    pub(super) fn frames_wanted(acq: &AcquisitionConfig) -> u64 {
        match acq.image_mode {
            ImageMode::Single => 1,
            ImageMode::Multiple => acq.num_images.into(),
            ImageMode::Continuous => 0,
        }
    }

    pub(super) fn acquire(self: &Arc<Self>, on: bool, req: &WriteRequest) -> WriteReply {
        if !on {
            // Acquire = 0: stop; the watcher finishes the run (and any waiting put).
            if let Some(run) = self.run.lock().unwrap().as_ref() {
                run.stop();
            }
            return WriteReply::Accept;
        }
        // A run whose detector has stopped is only writing its last frames: this Acquire is
        // a new run (a client may ask for it as soon as Acquire_RBV falls), started when the
        // old one is done.
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.busy.load(Ordering::Acquire)
            && !self.detector_running.load(Ordering::Acquire)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut run = self.run.lock().unwrap();
        if self.busy.load(Ordering::Acquire) {
            // Still acquiring: this put completes with the run.
            return wait_in(&self.acquire_waiters, req);
        }
        match self.start_run() {
            Ok(handle) => {
                *run = Some(handle);
                self.detector_running.store(true, Ordering::Release);
                self.busy.store(true, Ordering::Release);
                drop(run);
                self.set(Pv::CamAcquireRbv, 1);
                self.set(Pv::CamAcquireBusy, 1);
                self.set(Pv::CamDetectorStateRbv, 1);
                self.set_text(Pv::CamStatusMessageRbv, "Acquiring");
                let reply = wait_in(&self.acquire_waiters, req);
                let ioc = self.clone();
                if let Err(e) = std::thread::Builder::new()
                    .name("detflow-run-watch".into())
                    .spawn(move || ioc.watch_run())
                {
                    tracing::error!("cannot start the run watcher: {e}");
                }
                reply
            }
            Err(message) => {
                tracing::warn!("acquire refused: {message}");
                self.set_text(Pv::CamStatusMessageRbv, &message);
                self.set(Pv::CamDetectorStateRbv, 6);
                WriteReply::reject()
            }
        }
    }

    pub(super) fn start_run(self: &Arc<Self>) -> Result<AcquisitionHandle, Refusal> {
        let v = &self.opts.validated;
        let mut acq = self.acquisition_config()?;
        let frames = Self::frames_wanted(&acq);
        let mode = match self.int(Pv::CamSimModeRbv) {
            0 => detflow_sim::SimMode::LinearRamp,
            2 => detflow_sim::SimMode::Sine,
            3 => detflow_sim::SimMode::OffsetNoise,
            _ => detflow_sim::SimMode::Peaks,
        };
        let detector = match v.backend.clone() {
            // The simulated detector draws what the cam's simDetector PVs say.
            BackendSpec::Sim { fifo_depth, faults } => {
                let sim = detflow_sim::SimDetector::with_options(
                    detflow_sim::SimConfig {
                        max_width: v.sensor.0,
                        max_height: v.sensor.1,
                        seed: v.seed,
                        params: self.sim_params(mode),
                    },
                    detflow_sim::SimOptions { fifo_depth, faults },
                )
                .map_err(|e| format!("cannot create the simulated detector: {e}"))?;
                Box::new(sim) as Box<dyn detflow_engine::backend::Backend>
            }
            other => {
                detflow_engine::acquisition::make_backend(other, v.sensor, v.seed, mode, &mut acq)
                    .map_err(|e| format!("{e:#}"))?
            }
        };
        let shape_bytes = self.frame_shape().map(|s| s.bytes()).unwrap_or(1);
        let slots = if self.opts.config.ring.slots == 0 {
            detflow_engine::config::auto_slots(shape_bytes)
        } else {
            v.ring_slots
        };
        let ring = RingOptions {
            slots,
            policy: v.ring_policy,
            shm: v.ring_shm.clone(),
            workers: v.workers,
        };
        // FileWriteMode Single with AutoSave: each frame of this run is a file of its own
        // (NDPluginFile), no Capture needed; closed when the run ends.
        if self.int(Pv::HdfFileWriteModeRbv) == 0
            && self.flag(Pv::HdfAutoSaveRbv)
            && self.plugin.lock().session.is_none()
        {
            match self.open_capture() {
                Ok(()) => self.auto_save_open.store(true, Ordering::Release),
                Err(why) => {
                    tracing::warn!("AutoSave: {why}");
                    self.set_text(Pv::HdfWriteMessage, &format!("AutoSave: {why}"));
                }
            }
        }
        // Encode with the open capture's codec, else with the one the plugin would open with.
        let codec = match &self.plugin.lock().session {
            Some(session) => session.settings().codec,
            None => self.codec().unwrap_or(Codec::None),
        };
        self.counter_base
            .store(self.int(Pv::CamArrayCounterRbv) as i32, Ordering::Relaxed);
        self.set(Pv::CamNumImagesCounterRbv, 0);
        let observer: Arc<dyn Observer> = self.clone();
        let handle = Acquisition::start_shared(
            detector,
            acq,
            frames,
            ring,
            self.plugin.clone(),
            codec,
            Some(observer),
        )
        .map_err(|e| format!("{e:#}"))?;
        tracing::info!(frames, %codec, "acquisition started");
        Ok(handle)
    }

    /// Follow a run: post its counters while it runs; when the detector stops, Acquire
    /// falls; when the plugin has written every frame (or at once with WaitForPlugins =
    /// No), AcquireBusy falls and waiting puts complete.
    pub(super) fn watch_run(self: Arc<Self>) {
        let mut detector_done = false;
        let mut last = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(10));
            let status = {
                let run = self.run.lock().unwrap();
                match run.as_ref() {
                    Some(h) => h.status(),
                    None => break,
                }
            };
            if last.elapsed() >= Duration::from_millis(100) {
                self.post_run_status(&status);
                last = Instant::now();
            }
            if !detector_done && status.state != State::Acquiring {
                detector_done = true;
                // Before Acquire falls: a client that sees it fall may start the next run.
                self.detector_running.store(false, Ordering::Release);
                self.set(Pv::CamDetectorStateRbv, 0);
                self.set(Pv::CamAcquire, 0);
                self.set(Pv::CamAcquireRbv, 0);
                if !self.flag(Pv::CamWaitForPlugins) {
                    self.set(Pv::CamAcquireBusy, 0);
                    complete(&self.acquire_waiters, None);
                }
            }
            if matches!(status.state, State::Done | State::Failed) {
                break;
            }
        }
        self.detector_running.store(false, Ordering::Release);
        let handle = self.run.lock().unwrap().take();
        let Some(handle) = handle else { return };
        let summary = handle.wait();
        if self.auto_save_open.swap(false, Ordering::AcqRel) {
            self.end_capture(None);
        }
        let lost = summary.frames_dropped
            + summary.frames_overrun
            + summary.frames_corrupted
            + summary.frames_lost
            + summary.frames_incomplete;
        self.lost_before.fetch_add(lost, Ordering::Relaxed);
        let total = self
            .lost_before
            .load(Ordering::Relaxed)
            .min(i32::MAX as u64) as i32;
        self.set(Pv::CamDroppedFramesRbv, total);
        self.set(Pv::HdfDroppedArraysRbv, total);
        self.set(Pv::CamArrayRateRbv, 0.0);
        match &summary.error {
            // The state goes back to Idle below (clients wait for Idle); the message stays.
            Some(e) => {
                tracing::warn!("acquisition ended: {e}");
                self.set_text(Pv::CamStatusMessageRbv, e);
            }
            None => self.set_text(Pv::CamStatusMessageRbv, "Idle"),
        }
        tracing::info!(
            acquired = summary.frames_acquired,
            written = summary.frames_written,
            dropped = summary.frames_dropped,
            lost,
            "acquisition ended"
        );
        self.set(Pv::CamDetectorStateRbv, 0);
        self.set(Pv::CamAcquire, 0);
        self.set(Pv::CamAcquireRbv, 0);
        self.busy.store(false, Ordering::Release);
        self.set(Pv::CamAcquireBusy, 0);
        complete(&self.acquire_waiters, None);
    }

    pub(super) fn post_run_status(&self, s: &detflow_engine::acquisition::Status) {
        let lost = s.frames_dropped
            + s.frames_overrun
            + s.frames_corrupted
            + s.frames_lost
            + s.frames_incomplete;
        let total = (self.lost_before.load(Ordering::Relaxed) + lost).min(i32::MAX as u64) as i32;
        self.set(Pv::CamDroppedFramesRbv, total);
        self.set(Pv::HdfDroppedArraysRbv, total);
        self.set(Pv::CamArrayRateRbv, s.fps);
        self.set(Pv::HdfArrayRateRbv, s.fps);
        self.set(Pv::HdfIOSpeed, s.mb_per_s);
        let in_use = s
            .ring
            .produced
            .saturating_sub(s.frames_written + s.frames_dropped + s.frames_not_captured);
        self.set(Pv::HdfQueueUse, in_use.min(i32::MAX as u64) as i32);
        self.set(
            Pv::HdfQueueFree,
            (s.ring_slots as u64).saturating_sub(in_use) as i32,
        );
    }
}
