//! The cam (ADBase + simDetector): the frame its settings describe, and the runs that
//! `Acquire` starts from the config, followed until their frames are written.

use super::*;

impl Ioc {
    /// The frames of a run now: the region binned, of the pixel type (of the config).
    pub(super) fn frame_shape(&self) -> Result<FrameShape, Refusal> {
        let c = self.config.lock().unwrap();
        let (width, height) = c.detector.output_size().map_err(|e| e.to_string())?;
        Ok(FrameShape {
            width,
            height,
            pixel_type: c.detector.dtype,
            color_mode: ColorMode::Mono,
        })
    }

    /// Frames the run asks for (0: until stopped): ImageMode Single 1, Multiple NumImages
    /// (0 taken as 1), Continuous 0.
    pub(super) fn frames_wanted(&self) -> u64 {
        match self.int(Pv::CamImageModeRbv) {
            0 => 1,
            1 => self.int(Pv::CamNumImagesRbv).clamp(1, u32::MAX.into()) as u64,
            _ => 0,
        }
    }

    /// `Acquire`: 0 stops the run (the watcher finishes it and any waiting put); 1 starts
    /// one, or, while a run is closing, queues one that its watcher starts when the old run
    /// ends. Never waits for a run: a put-callback completes when its run is over.
    pub(super) fn acquire(self: &Arc<Self>, on: bool, req: &WriteRequest) -> WriteReply {
        if self.series_mode {
            return self.acquire_series(on, req);
        }
        let mut runs = self.runs.lock().unwrap();
        if !on {
            let cancelled = runs.queued.take();
            if let Some(run) = runs.current.as_ref() {
                run.stop();
            }
            drop(runs);
            // A run asked for while the last one closed never starts: its puts are done.
            for c in cancelled.into_iter().flatten() {
                c.complete();
            }
            return WriteReply::Accept;
        }
        match runs.phase {
            // Still acquiring: this put completes with the run.
            Phase::Acquiring => return wait_in(&self.acquire_waiters, req),
            // The detector stopped and the run is writing its last frames: a client may ask
            // for the next run as soon as Acquire_RBV falls. It starts when this one ends.
            Phase::Closing => {
                let queued = runs.queued.get_or_insert_with(Vec::new);
                if !req.is_notify() {
                    return WriteReply::Accept;
                }
                let c = req.completion();
                queued.push(c.clone());
                return WriteReply::Pending(c);
            }
            Phase::Idle => {}
        }
        match self.start_run() {
            Ok(handle) => {
                let events = handle.events().clone();
                runs.current = Some(handle);
                runs.phase = Phase::Acquiring;
                drop(runs);
                self.post_run_started();
                let reply = wait_in(&self.acquire_waiters, req);
                let ioc = self.clone();
                if let Err(e) = std::thread::Builder::new()
                    .name("detflow-run-watch".into())
                    .spawn(move || ioc.watch_runs(events))
                {
                    tracing::error!("cannot start the run watcher: {e}");
                }
                reply
            }
            Err(message) => {
                drop(runs);
                self.post_refused(&message);
                WriteReply::reject()
            }
        }
    }

    pub(super) fn post_run_started(&self) {
        self.set(Pv::CamAcquireRbv, 1);
        self.set(Pv::CamAcquireBusy, 1);
        self.set(Pv::CamDetectorStateRbv, 1);
        self.set_text(Pv::CamStatusMessageRbv, "Acquiring");
    }

    pub(super) fn post_refused(&self, message: &str) {
        tracing::warn!("acquire refused: {message}");
        self.set_text(Pv::CamStatusMessageRbv, message);
        self.set(Pv::CamDetectorStateRbv, 6);
    }

    /// Start a run with the config, for the frames ImageMode and NumImages ask; its frames go
    /// to the plugin.
    pub(super) fn start_run(self: &Arc<Self>) -> Result<RunHandle, Refusal> {
        // FileWriteMode Single with AutoSave: each frame of this run is a file of its own
        // (NDPluginFile), no Capture needed; closed when the run ends.
        if self.int(Pv::HdfFileWriteModeRbv) == 0
            && self.flag(Pv::HdfAutoSaveRbv)
            && !self.plugin.is_open()
        {
            match self.open_capture() {
                Ok(()) => self.auto_save_open.store(true, Ordering::Release),
                Err(why) => {
                    tracing::warn!("AutoSave: {why}");
                    self.set_text(Pv::HdfWriteMessage, &format!("AutoSave: {why}"));
                }
            }
        }
        let mut config = self.config.lock().unwrap().clone();
        config.detector.frames = self.frames_wanted();
        // Encode with the open capture's codec, else with the one the plugin would open with.
        if let Some(codec) = self.plugin.codec() {
            config.writer.codec = codec.into();
        }
        let (frames, codec, slots) = (
            config.detector.frames,
            config.writer.codec,
            config.ring.slots,
        );
        self.counter_base
            .store(self.int(Pv::CamArrayCounterRbv) as i32, Ordering::Relaxed);
        self.set(Pv::CamNumImagesCounterRbv, 0);
        let observer: Arc<dyn Observer> = self.clone();
        let handle = Acquisition::builder(config)
            .sink(self.plugin.clone())
            .observer(observer)
            // 0: automatic for the frames of this run's region.
            .ring_slots(slots)
            .start()
            .map_err(|e| detflow_engine::error::chain(&e))?;
        tracing::info!(frames, %codec, "acquisition started");
        Ok(handle)
    }

    /// Follow runs, one after the other: the current one until it ends, then the one queued
    /// meanwhile, if any. Reacts to the run's events, and posts rates every 100 ms.
    pub(super) fn watch_runs(self: Arc<Self>, events: Receiver<RunEvent>) {
        let mut events = events;
        loop {
            self.follow_run(&events);
            match self.end_run() {
                Some(next) => events = next,
                None => return,
            }
        }
    }

    /// Post a run's counters while it runs; when the detector stops, Acquire falls; when
    /// the run ended (every frame written, every file closed), return.
    fn follow_run(&self, events: &Receiver<RunEvent>) {
        let tick = crossbeam_channel::tick(Duration::from_millis(100));
        let mut detector_done = false;
        loop {
            let state = crossbeam_channel::select! {
                recv(events) -> event => match event {
                    Ok(RunEvent::Ended(_)) | Err(_) => return,
                    Ok(RunEvent::State(state)) => state,
                    Ok(_) => continue,
                },
                // The rates, and the state again: an event dropped by a full channel is no
                // harm.
                recv(tick) -> _ => match self.run_status() {
                    Some(status) => {
                        self.post_run_status(&status);
                        status.state
                    }
                    None => continue,
                },
            };
            if !detector_done && state != State::Acquiring {
                detector_done = true;
                self.detector_stopped();
            }
        }
    }

    fn run_status(&self) -> Option<Status> {
        self.runs
            .lock()
            .unwrap()
            .current
            .as_ref()
            .map(RunHandle::status)
    }

    /// The detector stopped: Acquire falls; with WaitForPlugins = No, AcquireBusy too and
    /// waiting puts complete.
    fn detector_stopped(&self) {
        // Before Acquire falls: a client that sees it fall may ask for the next run, which
        // is queued from here on.
        {
            let mut runs = self.runs.lock().unwrap();
            if runs.phase == Phase::Acquiring {
                runs.phase = Phase::Closing;
            }
        }
        self.set(Pv::CamDetectorStateRbv, 0);
        self.set(Pv::CamAcquire, 0);
        self.set(Pv::CamAcquireRbv, 0);
        if !self.flag(Pv::CamWaitForPlugins) {
            self.set(Pv::CamAcquireBusy, 0);
            complete(&self.acquire_waiters, None);
        }
    }

    /// The run ended: post its outcome, complete its puts; start the run queued meanwhile
    /// and return its events, or go idle.
    fn end_run(self: &Arc<Self>) -> Option<Receiver<RunEvent>> {
        let handle = self.runs.lock().unwrap().current.take();
        if let Some(mut handle) = handle {
            handle.wait();
            self.post_run_end(&handle.summary());
        }
        self.set(Pv::CamDetectorStateRbv, 0);
        self.set(Pv::CamAcquire, 0);
        self.set(Pv::CamAcquireRbv, 0);
        self.set(Pv::CamAcquireBusy, 0);
        let mut runs = self.runs.lock().unwrap();
        let (next, refused) = match runs.queued.take() {
            None => (None, None),
            Some(queued) => match self.start_run() {
                Ok(handle) => {
                    let events = handle.events().clone();
                    runs.current = Some(handle);
                    (Some((events, queued)), None)
                }
                Err(message) => (None, Some((queued, message))),
            },
        };
        runs.phase = if next.is_some() {
            Phase::Acquiring
        } else {
            Phase::Idle
        };
        // The old run's puts complete now; a new run's puts wait for it.
        let done = match &next {
            Some((_, queued)) => {
                std::mem::replace(&mut *self.acquire_waiters.lock().unwrap(), queued.clone())
            }
            None => std::mem::take(&mut *self.acquire_waiters.lock().unwrap()),
        };
        drop(runs);
        self.runs_idle.notify_all();
        if next.is_some() {
            self.post_run_started();
        }
        complete_all(done, None);
        if let Some((queued, message)) = refused {
            self.post_refused(&message);
            complete_all(queued, Some(Eca::PutFail));
        }
        next.map(|(events, _)| events)
    }

    /// A run's outcome: frames lost, the message, the AutoSave capture closed.
    fn post_run_end(&self, summary: &Summary) {
        if self.auto_save_open.swap(false, Ordering::AcqRel) {
            self.end_capture(None);
        }
        let s = &summary.status;
        let lost = s.frames_dropped
            + s.frames_overrun
            + s.frames_corrupted
            + s.frames_lost
            + s.frames_incomplete;
        self.lost_before.fetch_add(lost, Ordering::Relaxed);
        let total = self
            .lost_before
            .load(Ordering::Relaxed)
            .min(i32::MAX as u64) as i32;
        self.set(Pv::CamDroppedFramesRbv, total);
        self.set(Pv::HdfDroppedArraysRbv, total);
        self.set(Pv::CamArrayRateRbv, 0.0);
        match &summary.error {
            // The state goes back to Idle (clients wait for Idle); the message stays.
            Some(e) => {
                tracing::warn!("acquisition ended: {e}");
                self.set_text(Pv::CamStatusMessageRbv, e);
            }
            None => self.set_text(Pv::CamStatusMessageRbv, "Idle"),
        }
        tracing::info!(
            acquired = s.frames_acquired,
            written = s.frames_written,
            dropped = s.frames_dropped,
            lost,
            "acquisition ended"
        );
    }

    pub(super) fn post_run_status(&self, s: &Status) {
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
