//! Process variables as the daemon sees them: [`PvSpec`] to define one, [`PvHandle`] to post
//! values from any thread and to receive client writes ([`WriteRequest`] → [`WriteReply`],
//! with [`Completion`] to finish a put-notify later).
//!
//! Posting never blocks on clients: it queues the new snapshot in each matching
//! subscription's short queue (replacing the newest entry when the queue is full, so a slow
//! client sees the latest value, never an unbounded backlog) and wakes that client's writer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};

use crate::circuit::CircuitShared;
use crate::dbr::{self, DbrRequest, PutTarget};
use crate::error::{PostError, ServerError};
use crate::proto::{self, Eca, Header, cmd};
use crate::value::{
    ALARM_STATUS_NAMES, Access, Alarm, EpicsTime, MAX_ENUM_STATES, MAX_ENUM_STRING, MAX_UNITS,
    Metadata, NativeType, SEVERITY_NAMES, Value,
};

/// Monitor event bits (EVENT_ADD mask).
pub(crate) mod dbe {
    pub const VALUE: u16 = 1;
    pub const LOG: u16 = 2;
    pub const ALARM: u16 = 4;
    pub const PROPERTY: u16 = 8;
}

/// The definition of a PV: name, type, element count, initial value, metadata and access.
///
/// ```
/// use detflow_ca::{PvSpec, Access};
/// let t = PvSpec::double("DET:AcquireTime", 0.1).precision(3).units("s").control_limits(0.0, 10.0);
/// let mode = PvSpec::enumeration("DET:ImageMode", &["Single", "Multiple", "Continuous"], 0);
/// let path = PvSpec::char_string("HDF1:FilePath", 256, "/data/");
/// let rbv = PvSpec::long("DET:ArrayCounter_RBV", 0).access(Access::ReadOnly);
/// # let _ = (t, mode, path, rbv);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PvSpec {
    /// The PV name (no `.`: the part after a dot names a field).
    pub name: String,
    /// Native type.
    pub native: NativeType,
    /// Native element count (NELM): 1 for scalars.
    pub count: usize,
    /// For CHAR arrays: whether they hold text (a long string, NUL-terminated).
    pub text: bool,
    /// Initial value (converted to the native type when added).
    pub initial: Value,
    /// Display metadata.
    pub meta: Metadata,
    /// Client access.
    pub access: Access,
}

impl PvSpec {
    fn new(name: &str, native: NativeType, count: usize, initial: Value, rtyp: &str) -> PvSpec {
        PvSpec {
            name: name.to_owned(),
            native,
            count,
            text: false,
            initial,
            meta: Metadata {
                record_type: rtyp.to_owned(),
                ..Metadata::default()
            },
            access: Access::ReadWrite,
        }
    }

    /// A DOUBLE scalar (record type `ao`).
    pub fn double(name: &str, initial: f64) -> PvSpec {
        PvSpec::new(name, NativeType::Double, 1, initial.into(), "ao")
    }

    /// A FLOAT scalar (record type `ao`).
    pub fn float(name: &str, initial: f32) -> PvSpec {
        PvSpec::new(name, NativeType::Float, 1, initial.into(), "ao")
    }

    /// A LONG scalar (record type `longout`).
    pub fn long(name: &str, initial: i32) -> PvSpec {
        PvSpec::new(name, NativeType::Long, 1, initial.into(), "longout")
    }

    /// A SHORT scalar (record type `longout`).
    pub fn short(name: &str, initial: i16) -> PvSpec {
        PvSpec::new(name, NativeType::Short, 1, initial.into(), "longout")
    }

    /// A STRING scalar, at most 39 bytes (record type `stringout`).
    pub fn string(name: &str, initial: &str) -> PvSpec {
        PvSpec::new(name, NativeType::String, 1, initial.into(), "stringout")
    }

    /// An ENUM with up to 16 states of up to 25 bytes (record type `mbbo`).
    pub fn enumeration(name: &str, states: &[&str], initial: u16) -> PvSpec {
        let mut spec = PvSpec::new(
            name,
            NativeType::Enum,
            1,
            Value::enum_index(initial),
            "mbbo",
        );
        spec.meta.enum_states = states.iter().map(|s| (*s).to_owned()).collect();
        spec
    }

    /// A long string: a CHAR array of `nelm` bytes holding text and a NUL (areaDetector's
    /// `FilePath`, `FileName`, ...; record type `waveform`).
    pub fn char_string(name: &str, nelm: usize, initial: &str) -> PvSpec {
        let mut spec = PvSpec::new(
            name,
            NativeType::Char,
            nelm,
            Value::char_string(initial),
            "waveform",
        );
        spec.text = true;
        spec
    }

    /// An array of `nelm` elements of type `native`, initially empty (NORD 0; record type
    /// `waveform`).
    pub fn waveform(name: &str, native: NativeType, nelm: usize) -> PvSpec {
        PvSpec::new(name, native, nelm, Value::empty(native), "waveform")
    }

    /// Set the initial value.
    pub fn initial(mut self, value: impl Into<Value>) -> PvSpec {
        self.initial = value.into();
        self
    }

    /// Decimal places for display and for number → string reads.
    pub fn precision(mut self, precision: i16) -> PvSpec {
        self.meta.precision = precision;
        self
    }

    /// Engineering units (at most 7 bytes).
    pub fn units(mut self, units: &str) -> PvSpec {
        self.meta.units = units.to_owned();
        self
    }

    /// Display range (LOPR, HOPR).
    pub fn display_limits(mut self, low: f64, high: f64) -> PvSpec {
        self.meta.display = (low, high);
        self
    }

    /// Control range (DRVL, DRVH): served in CTRL reads, and writes outside it are refused
    /// with ECA_PUTFAIL.
    pub fn control_limits(mut self, low: f64, high: f64) -> PvSpec {
        self.meta.control = (low, high);
        self
    }

    /// Alarm limits (LOLO, LOW, HIGH, HIHI), served in GR/CTRL reads.
    pub fn alarm_limits(mut self, lolo: f64, low: f64, high: f64, hihi: f64) -> PvSpec {
        self.meta.alarm = (lolo, low, high, hihi);
        self
    }

    /// Description (`.DESC`).
    pub fn description(mut self, text: &str) -> PvSpec {
        self.meta.description = text.to_owned();
        self
    }

    /// Record type reported by `.RTYP` and DBR_CLASS_NAME.
    pub fn record_type(mut self, rtyp: &str) -> PvSpec {
        self.meta.record_type = rtyp.to_owned();
        self
    }

    /// Client access (default read-write).
    pub fn access(mut self, access: Access) -> PvSpec {
        self.access = access;
        self
    }

    /// Shorthand for `access(Access::ReadOnly)`: readbacks (`_RBV`).
    pub fn read_only(self) -> PvSpec {
        self.access(Access::ReadOnly)
    }

    fn invalid(&self, reason: impl Into<String>) -> ServerError {
        ServerError::InvalidPv {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Check the definition and convert the initial value.
    pub(crate) fn validate(&self) -> Result<Value, ServerError> {
        if self.name.is_empty() || self.name.len() > 500 {
            return Err(self.invalid("the name must be 1 to 500 bytes"));
        }
        if self.name.contains('.') || self.name.contains(char::is_whitespace) {
            return Err(self.invalid("the name must not contain '.' or blanks"));
        }
        if self.count == 0 || self.count > u32::MAX as usize {
            return Err(self.invalid(format!("element count {} is not in 1..=2^32-1", self.count)));
        }
        if self.meta.units.len() > MAX_UNITS {
            return Err(self.invalid(format!(
                "units {:?} exceed {MAX_UNITS} bytes",
                self.meta.units
            )));
        }
        if self.meta.enum_states.len() > MAX_ENUM_STATES {
            return Err(self.invalid(format!(
                "{} enum states exceed {MAX_ENUM_STATES}",
                self.meta.enum_states.len()
            )));
        }
        if let Some(s) = self
            .meta
            .enum_states
            .iter()
            .find(|s| s.len() > MAX_ENUM_STRING)
        {
            return Err(self.invalid(format!("enum state {s:?} exceeds {MAX_ENUM_STRING} bytes")));
        }
        if self.text && self.native != NativeType::Char {
            return Err(self.invalid("only CHAR arrays can hold text"));
        }
        coerce(
            &self.name,
            self.native,
            self.count,
            self.text,
            &self.meta,
            self.initial.clone(),
        )
        .map_err(|e| self.invalid(format!("initial value: {e}")))
    }
}

/// Convert a posted value to the PV's native type and check its length.
fn coerce(
    name: &str,
    native: NativeType,
    count: usize,
    text: bool,
    meta: &Metadata,
    value: Value,
) -> Result<Value, PostError> {
    let value = if value.native_type() == native {
        value
    } else {
        // Posting ignores the control limits: they bound client writes only.
        let loose = Metadata {
            control: (0.0, 0.0),
            ..meta.clone()
        };
        let target = PutTarget {
            native,
            max_count: usize::MAX,
            text,
            meta: &loose,
        };
        dbr::convert_value(&value, &target)
            .map_err(|eca| PostError::convert(name, value.native_type(), native, eca))?
    };
    if value.len() > count {
        return Err(PostError::TooLong {
            pv: name.to_owned(),
            count: value.len(),
            max: count,
        });
    }
    Ok(value)
}

/// Everything a read or monitor update encodes from, at one instant.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub value: Value,
    pub alarm: Alarm,
    pub stamp: EpicsTime,
    pub meta: Arc<Metadata>,
}

impl Snapshot {
    pub(crate) fn source(&self) -> dbr::Source<'_> {
        dbr::Source {
            value: &self.value,
            alarm: self.alarm,
            stamp: self.stamp,
            meta: &self.meta,
        }
    }
}

/// A field of a record channel (`NAME.FIELD`, spec §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FieldView {
    Val,
    Disa,
    Desc,
    Egu,
    Prec,
    Hopr,
    Lopr,
    Drvh,
    Drvl,
    Rtyp,
    Name,
    Sevr,
    Stat,
    Nord,
}

impl FieldView {
    pub(crate) fn parse(field: &str) -> Option<FieldView> {
        Some(match field {
            "VAL" => FieldView::Val,
            "DISA" => FieldView::Disa,
            "DESC" => FieldView::Desc,
            "EGU" => FieldView::Egu,
            "PREC" => FieldView::Prec,
            "HOPR" => FieldView::Hopr,
            "LOPR" => FieldView::Lopr,
            "DRVH" => FieldView::Drvh,
            "DRVL" => FieldView::Drvl,
            "RTYP" => FieldView::Rtyp,
            "NAME" => FieldView::Name,
            "SEVR" => FieldView::Sevr,
            "STAT" => FieldView::Stat,
            "NORD" => FieldView::Nord,
            _ => return None,
        })
    }

    /// Native type and element count the channel reports.
    pub(crate) fn native(self, pv: &Pv) -> (NativeType, usize) {
        match self {
            FieldView::Val => (pv.native, pv.count),
            FieldView::Disa | FieldView::Prec => (NativeType::Short, 1),
            FieldView::Desc | FieldView::Egu | FieldView::Rtyp | FieldView::Name => {
                (NativeType::String, 1)
            }
            FieldView::Hopr | FieldView::Lopr | FieldView::Drvh | FieldView::Drvl => {
                (NativeType::Double, 1)
            }
            FieldView::Sevr | FieldView::Stat => (NativeType::Enum, 1),
            FieldView::Nord => (NativeType::Long, 1),
        }
    }

    /// The field's snapshot derived from the record's.
    pub(crate) fn project(self, pv: &Pv, snap: &Arc<Snapshot>) -> Arc<Snapshot> {
        static NO_META: OnceLock<Arc<Metadata>> = OnceLock::new();
        static SEVR_META: OnceLock<Arc<Metadata>> = OnceLock::new();
        static STAT_META: OnceLock<Arc<Metadata>> = OnceLock::new();
        let plain = || NO_META.get_or_init(Default::default).clone();
        let m = &snap.meta;
        let (value, meta) = match self {
            FieldView::Val => return snap.clone(),
            FieldView::Disa => (Value::from(0i16), plain()),
            FieldView::Prec => (Value::from(m.precision), plain()),
            FieldView::Desc => (Value::from(m.description.as_str()), plain()),
            FieldView::Egu => (Value::from(m.units.as_str()), plain()),
            FieldView::Rtyp => (Value::from(m.record_type.as_str()), plain()),
            FieldView::Name => (Value::from(pv.name.as_str()), plain()),
            FieldView::Hopr => (Value::from(m.display.1), plain()),
            FieldView::Lopr => (Value::from(m.display.0), plain()),
            FieldView::Drvh => (Value::from(m.control.1), plain()),
            FieldView::Drvl => (Value::from(m.control.0), plain()),
            FieldView::Nord => (Value::from(snap.value.len() as i32), plain()),
            FieldView::Sevr => (
                Value::enum_index(snap.alarm.severity as u16),
                SEVR_META
                    .get_or_init(|| {
                        Arc::new(Metadata {
                            enum_states: SEVERITY_NAMES.iter().map(|s| (*s).to_owned()).collect(),
                            ..Metadata::default()
                        })
                    })
                    .clone(),
            ),
            FieldView::Stat => (
                Value::enum_index(snap.alarm.status),
                STAT_META
                    .get_or_init(|| {
                        Arc::new(Metadata {
                            enum_states: ALARM_STATUS_NAMES[..MAX_ENUM_STATES]
                                .iter()
                                .map(|s| (*s).to_owned())
                                .collect(),
                            ..Metadata::default()
                        })
                    })
                    .clone(),
            ),
        };
        Arc::new(Snapshot {
            value,
            alarm: snap.alarm,
            stamp: snap.stamp,
            meta,
        })
    }
}

/// Updates a subscription queues for a small value before it coalesces (as rsrv's event
/// queue does): a client that keeps up sees every value posted, e.g. every frame counter.
pub(crate) const SMALL_QUEUE: usize = 64;

/// Values larger than this (bytes) queue one update only: a slow client of an image waveform
/// gets the newest image, and the server never holds a backlog of images.
pub(crate) const SMALL_VALUE_BYTES: usize = 4096;

/// One monitor: its parameters, and a short queue of undelivered updates.
pub(crate) struct Subscription {
    pub circuit: Weak<CircuitShared>,
    pub subid: u32,
    pub data_type: u16,
    /// Requested count; 0 = the current length at each update.
    pub count: u32,
    pub mask: u16,
    pub view: FieldView,
    pub pv: Arc<Pv>,
    /// Snapshots not yet sent, oldest first, at most `depth`; when full, posting replaces the
    /// newest (coalescing to the latest).
    pub slot: Mutex<std::collections::VecDeque<Arc<Snapshot>>>,
    /// How many updates may wait: [`SMALL_QUEUE`] for small values, 1 for large ones.
    pub depth: usize,
    /// Whether this subscription sits in its circuit's dirty queue (at most once).
    pub queued: AtomicBool,
    /// Set on EVENT_CANCEL / CLEAR_CHANNEL / close; no update is sent after it.
    pub cancelled: AtomicBool,
}

impl Subscription {
    /// Queue `snap` and make sure the circuit's writer will look at it.
    fn offer(self: &Arc<Self>, snap: &Arc<Snapshot>) {
        {
            let mut q = lock(&self.slot);
            if q.len() >= self.depth {
                q.pop_back();
            }
            q.push_back(snap.clone());
        }
        // SeqCst pairs with the writer's `queued.store(false)` before it takes the slot:
        // either the writer sees this snapshot, or we see `false` and queue again.
        if !self.queued.swap(true, Ordering::SeqCst)
            && let Some(circuit) = self.circuit.upgrade()
        {
            circuit.push_dirty(self.clone());
        }
    }
}

/// A channel on a circuit that the PV knows about, to send ACCESS_RIGHTS or SERVER_DISCONN.
pub(crate) struct ChannelLink {
    pub circuit: Weak<CircuitShared>,
    pub cid: u32,
    pub sid: u32,
    pub view: FieldView,
}

pub(crate) struct PvState {
    pub snap: Arc<Snapshot>,
    pub access: Access,
    pub subs: Vec<Arc<Subscription>>,
    pub channels: Vec<ChannelLink>,
    pub removed: bool,
}

/// The write callback type.
pub type WriteCallback = dyn Fn(&WriteRequest) -> WriteReply + Send + Sync + 'static;

/// A served PV (shared by the server table, handles, channels and subscriptions).
pub(crate) struct Pv {
    pub name: String,
    pub native: NativeType,
    pub count: usize,
    pub text: bool,
    state: Mutex<PvState>,
    on_write: RwLock<Option<Arc<WriteCallback>>>,
}

/// Lock a mutex, recovering the data if a panicking thread poisoned it: the state it guards
/// is always left consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pv {
    pub(crate) fn new(spec: PvSpec, initial: Value) -> Pv {
        let snap = Arc::new(Snapshot {
            value: initial,
            alarm: Alarm::NONE,
            stamp: EpicsTime::now(),
            meta: Arc::new(spec.meta),
        });
        Pv {
            name: spec.name,
            native: spec.native,
            count: spec.count,
            text: spec.text,
            state: Mutex::new(PvState {
                snap,
                access: spec.access,
                subs: Vec::new(),
                channels: Vec::new(),
                removed: false,
            }),
            on_write: RwLock::new(None),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, PvState> {
        lock(&self.state)
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.state().snap.clone()
    }

    /// Access of a channel viewing `view`: fields other than VAL are read-only.
    pub(crate) fn access_for(&self, access: Access, view: FieldView) -> Access {
        match (view, access) {
            (FieldView::Val, a) => a,
            (_, Access::None) => Access::None,
            _ => Access::ReadOnly,
        }
    }

    /// Replace the snapshot (`build` returns it with the event bits it raises) and offer it
    /// to every subscription whose mask matches.
    pub(crate) fn publish(&self, build: impl FnOnce(&Snapshot) -> (Snapshot, u16)) {
        let mut st = self.state();
        let (snap, events) = build(&st.snap);
        let snap = Arc::new(snap);
        st.snap = snap.clone();
        for sub in &st.subs {
            if sub.mask & events != 0 {
                sub.offer(&snap);
            }
        }
    }

    pub(crate) fn callback(&self) -> Option<Arc<WriteCallback>> {
        self.on_write
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Convert and store a client's value; posts VALUE|LOG monitors.
    pub(crate) fn store(&self, value: Value) {
        self.publish(|old| {
            let snap = Snapshot {
                value,
                alarm: old.alarm,
                stamp: EpicsTime::now(),
                meta: old.meta.clone(),
            };
            (snap, dbe::VALUE | dbe::LOG)
        });
    }

    pub(crate) fn detach_sub(&self, sub: &Arc<Subscription>) {
        self.state().subs.retain(|s| !Arc::ptr_eq(s, sub));
    }

    pub(crate) fn detach_channel(&self, circuit: &Weak<CircuitShared>, sid: u32) {
        self.state()
            .channels
            .retain(|c| !(c.sid == sid && Weak::ptr_eq(&c.circuit, circuit)));
    }
}

/// A handle on a served PV: post values and alarms from any thread, and receive writes.
///
/// Cloning is cheap; all clones refer to the same PV.
#[derive(Clone)]
pub struct PvHandle {
    pub(crate) pv: Arc<Pv>,
}

impl std::fmt::Debug for PvHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvHandle")
            .field("name", &self.pv.name)
            .field("native", &self.pv.native)
            .field("count", &self.pv.count)
            .finish()
    }
}

impl PvHandle {
    /// The PV's name.
    pub fn name(&self) -> &str {
        &self.pv.name
    }

    /// The native type.
    pub fn native_type(&self) -> NativeType {
        self.pv.native
    }

    /// The native element count (NELM).
    pub fn count(&self) -> usize {
        self.pv.count
    }

    /// The current value.
    pub fn value(&self) -> Value {
        self.pv.snapshot().value.clone()
    }

    /// The current alarm.
    pub fn alarm(&self) -> Alarm {
        self.pv.snapshot().alarm
    }

    /// The current metadata.
    pub fn metadata(&self) -> Metadata {
        (*self.pv.snapshot().meta).clone()
    }

    /// Post a new value, stamped now. It is converted to the native type (a number to a
    /// string PV, text to a CHAR array, ...). Monitors get it as the newest value; a slow
    /// client skips intermediate values, never the latest. Never blocks on clients.
    pub fn post(&self, value: impl Into<Value>) -> Result<(), PostError> {
        self.post_with(value, None, None)
    }

    /// Post a value with an alarm and/or a timestamp (`None`: keep the alarm / stamp now).
    /// An alarm change also reaches DBE_ALARM subscribers.
    pub fn post_with(
        &self,
        value: impl Into<Value>,
        alarm: Option<Alarm>,
        stamp: Option<EpicsTime>,
    ) -> Result<(), PostError> {
        let pv = &self.pv;
        let meta = pv.snapshot().meta.clone();
        let value = coerce(&pv.name, pv.native, pv.count, pv.text, &meta, value.into())?;
        pv.publish(|old| {
            let alarm = alarm.unwrap_or(old.alarm);
            let mut events = dbe::VALUE | dbe::LOG;
            if alarm != old.alarm {
                events |= dbe::ALARM;
            }
            let snap = Snapshot {
                value,
                alarm,
                stamp: stamp.unwrap_or_else(EpicsTime::now),
                meta: old.meta.clone(),
            };
            (snap, events)
        });
        Ok(())
    }

    /// Change the alarm only (posts to DBE_ALARM subscribers if it changed).
    pub fn set_alarm(&self, alarm: Alarm) {
        let pv = &self.pv;
        if pv.snapshot().alarm == alarm {
            return;
        }
        pv.publish(|old| {
            let snap = Snapshot {
                alarm,
                stamp: EpicsTime::now(),
                ..old.clone()
            };
            (snap, dbe::ALARM)
        });
    }

    /// Change the metadata (units, precision, limits, enum states); posts DBE_PROPERTY.
    pub fn update_metadata(&self, change: impl FnOnce(&mut Metadata)) {
        self.pv.publish(|old| {
            let mut meta = (*old.meta).clone();
            change(&mut meta);
            let snap = Snapshot {
                meta: Arc::new(meta),
                ..old.clone()
            };
            (snap, dbe::PROPERTY)
        });
    }

    /// Change client access; connected clients are told at once (ACCESS_RIGHTS).
    pub fn set_access(&self, access: Access) {
        let mut st = self.pv.state();
        st.access = access;
        for link in &st.channels {
            if let Some(c) = link.circuit.upgrade() {
                let bits = self.pv.access_for(access, link.view).bits();
                c.push_reply(|out| {
                    Header::new(cmd::ACCESS_RIGHTS, 0, 0, link.cid, bits).write_to(out)
                });
            }
        }
    }

    /// The current access.
    pub fn access(&self) -> Access {
        self.pv.state().access
    }

    /// Set the write callback, called on the client's circuit thread for each WRITE and
    /// WRITE_NOTIFY with the value already converted to the native type. Keep it quick:
    /// return [`WriteReply::Pending`] for slow actions. Without a callback every valid write
    /// is accepted.
    pub fn on_write(&self, f: impl Fn(&WriteRequest) -> WriteReply + Send + Sync + 'static) {
        *self.pv.on_write.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(f));
    }

    /// Number of live monitors on this PV (all clients).
    pub fn subscriber_count(&self) -> usize {
        self.pv.state().subs.len()
    }
}

/// A client's write, as given to the [`PvHandle::on_write`] callback.
pub struct WriteRequest {
    pub(crate) pv: PvHandle,
    pub(crate) value: Value,
    pub(crate) notify: Option<Arc<CompletionInner>>,
    pub(crate) host: String,
    pub(crate) user: String,
}

impl std::fmt::Debug for WriteRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRequest")
            .field("pv", &self.pv.name())
            .field("value", &self.value)
            .field("notify", &self.notify.is_some())
            .field("host", &self.host)
            .field("user", &self.user)
            .finish()
    }
}

impl WriteRequest {
    /// The PV written.
    pub fn pv(&self) -> &PvHandle {
        &self.pv
    }

    /// The value, already converted to the PV's native type.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Whether the client waits for completion (WRITE_NOTIFY, `caput -c`, `wait=True`).
    pub fn is_notify(&self) -> bool {
        self.notify.is_some()
    }

    /// The client's host name (HOST_NAME), for logs.
    pub fn client_host(&self) -> &str {
        &self.host
    }

    /// The client's user name (CLIENT_NAME), for logs.
    pub fn client_user(&self) -> &str {
        &self.user
    }

    /// A handle to finish this write later: keep a clone and return one in
    /// [`WriteReply::Pending`]. For a plain WRITE it is inert.
    pub fn completion(&self) -> Completion {
        Completion {
            inner: self.notify.clone(),
        }
    }
}

/// The callback's answer to a write.
#[derive(Debug)]
pub enum WriteReply {
    /// Store the value, post monitors, and (put-notify) reply ECA_NORMAL now.
    Accept,
    /// Refuse: nothing is stored; the client gets this code (ERROR for WRITE, the
    /// put-notify reply's status for WRITE_NOTIFY). Usually [`Eca::PutFail`].
    Reject(Eca),
    /// Store the value and post monitors now, but reply to a put-notify only when the
    /// [`Completion`] (from [`WriteRequest::completion`]) is completed or failed, or
    /// ECA_PUTFAIL once every clone of it is dropped.
    Pending(Completion),
}

impl WriteReply {
    /// `Reject(Eca::PutFail)`.
    pub fn reject() -> WriteReply {
        WriteReply::Reject(Eca::PutFail)
    }
}

/// Where a put-notify reply goes. Dropping the last reference unfinished replies
/// ECA_PUTFAIL, so every put-notify is answered exactly once.
pub(crate) struct CompletionInner {
    pub circuit: Weak<CircuitShared>,
    pub sid: u32,
    pub request: Header,
    pub done: AtomicBool,
    /// `Some` until the circuit has stored the written value ([`CompletionInner::release`]):
    /// a reply finished before then waits here (its status inside), so that it never
    /// overtakes the monitor updates of the put it answers.
    pub held: Mutex<Option<Option<Eca>>>,
}

impl CompletionInner {
    /// Send the WRITE_NOTIFY reply once; silently nothing if the channel or circuit is gone.
    pub(crate) fn finish(&self, eca: Eca) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(held) = lock(&self.held).as_mut() {
            *held = Some(eca);
            return;
        }
        self.send(eca);
    }

    /// The write is stored: send a reply that was finished meanwhile, and send later ones
    /// at once.
    pub(crate) fn release(&self) {
        let finished = lock(&self.held).take().flatten();
        if let Some(eca) = finished {
            self.send(eca);
        }
    }

    fn send(&self, eca: Eca) {
        if let Some(c) = self.circuit.upgrade()
            && c.has_channel(self.sid)
        {
            let r = self.request;
            c.push_reply(|out| {
                Header::new(
                    cmd::WRITE_NOTIFY,
                    r.data_type,
                    r.count,
                    eca.code(),
                    r.param2,
                )
                .write_to(out)
            });
        }
    }
}

impl Drop for CompletionInner {
    fn drop(&mut self) {
        self.finish(Eca::PutFail);
        self.release();
    }
}

/// Finishes a put-notify from any thread. Exactly one reply is sent: when [`complete`] or
/// [`fail`] is first called on any clone, or ECA_PUTFAIL when every clone is dropped
/// unfinished (or the write was accepted or rejected at once instead).
///
/// [`complete`]: Completion::complete
/// [`fail`]: Completion::fail
#[derive(Clone)]
pub struct Completion {
    inner: Option<Arc<CompletionInner>>,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("notify", &self.inner.is_some())
            .finish()
    }
}

impl Completion {
    /// The action finished: reply ECA_NORMAL.
    pub fn complete(&self) {
        if let Some(i) = &self.inner {
            i.finish(Eca::Normal);
        }
    }

    /// The action failed: reply with `eca` (e.g. [`Eca::PutFail`]).
    pub fn fail(&self, eca: Eca) {
        if let Some(i) = &self.inner {
            i.finish(eca);
        }
    }

    /// Whether a client is waiting on this completion (a WRITE_NOTIFY not yet answered).
    pub fn is_pending(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| !i.done.load(Ordering::Acquire))
    }
}

/// The server's PV table.
#[derive(Default)]
pub(crate) struct PvTable {
    map: RwLock<HashMap<String, Arc<Pv>>>,
}

impl PvTable {
    pub(crate) fn insert(&self, pv: Arc<Pv>) -> Result<(), ServerError> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&pv.name) {
            return Err(ServerError::DuplicatePv {
                name: pv.name.clone(),
            });
        }
        map.insert(pv.name.clone(), pv);
        Ok(())
    }

    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Pv>> {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Pv>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Resolve a channel name: `REC`, `REC.VAL` or `REC.FIELD` for the served fields.
    pub(crate) fn resolve(&self, name: &[u8]) -> Option<(Arc<Pv>, FieldView)> {
        let name = std::str::from_utf8(name).ok()?;
        let (record, view) = match name.split_once('.') {
            Some((r, f)) => (r, FieldView::parse(f)?),
            None => (name, FieldView::Val),
        };
        Some((self.get(record)?, view))
    }

    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Encode one read/monitor reply for `view` of `pv` into `out`: header + padded payload.
/// `command` is READ_NOTIFY, READ or EVENT_ADD; `param1` the success value (ECA_NORMAL, or the
/// cid for READ); `param2` the ioid or subscription id.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_reply(
    out: &mut Vec<u8>,
    command: u16,
    data_type: u16,
    req_count: u32,
    param1: u32,
    param2: u32,
    pv: &Pv,
    view: FieldView,
    snap: &Arc<Snapshot>,
    readable: bool,
) {
    let (_, native_count) = view.native(pv);
    let snap = view.project(pv, snap);
    let Some(req) = DbrRequest::from_id(data_type) else {
        Header::new(command, data_type, req_count, Eca::BadType.code(), param2).write_to(out);
        return;
    };
    let n = if req_count == 0 {
        snap.value.len()
    } else {
        (req_count as usize).min(native_count.max(1))
    };
    let len = req.payload_len(n).unwrap_or(0);
    let padded = proto::align8(len);
    let mut header = Header::new(command, data_type, n as u32, param1, param2);
    header.payload_size = padded as u32;
    let head_at = out.len();
    header.write_to(out);
    let body_at = out.len();
    let status = if !readable {
        Err(Eca::NoRdAccess)
    } else {
        dbr::encode(out, req, n, &snap.source())
    };
    match status {
        Ok(()) => out.resize(body_at + padded, 0),
        Err(eca) => {
            // Keep the header, zero the payload, status in param1 (spec §3.4). Count-0
            // failures shrink to the metadata only.
            out.truncate(head_at);
            let n = if req_count == 0 { 0 } else { n };
            let padded = proto::align8(req.payload_len(n).unwrap_or(0));
            let mut header = Header::new(command, data_type, n as u32, eca.code(), param2);
            header.payload_size = padded as u32;
            header.write_to(out);
            out.resize(out.len() + padded, 0);
        }
    }
}
