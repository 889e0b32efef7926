"""Two figures for `detflow serve`, measured over Channel Access as a client sees them.

(a) caget round trips while the daemon writes HDF5 as fast as this machine lets it: first the
    highest sustained rate is found (Compression None and BSLZ4, continuous acquisition, period
    0), then a separate client process reads PVs on already-open channels (pyepics
    `PV.get(use_monitor=False)`) at a steady pace for the whole write phase and another
    connects fresh channels from new processes now and then. Reported: median, p99, max.
(b) The daemon's RSS (VmRSS from /proc/PID/status, every --sample-seconds) over an idle phase
    (a client polls a few PVs and monitors cam1:ArrayCounter_RBV) and over an acquiring phase
    (back-to-back Capture + Acquire cycles of --cycle-frames frames, files deleted once
    closed). Reported: start, end, min, max and the least-squares slope, with and without the
    first minute.

The script starts the daemon itself (`detflow serve --data-root SCRATCH`), with its stderr in
SCRATCH/daemon.log, runs the phases, stops it with SIGTERM and checks that it exits 0.
Every file it writes goes under SCRATCH/data and is deleted once closed; a disk guard stops a
write phase when free space falls under --min-free-gb.

Run it inside a private network namespace so that Channel Access stays on loopback:

    cd /work/main && cargo build --release
    unshare -n sh -c 'ip link set lo up && exec target/tmp/ca-interop-venv/bin/python \\
        benches/serve_figures.py'                       # full run: 10 + 10 min + write phase
    ... benches/serve_figures.py --idle-minutes 1 --acquire-minutes 1 --write-seconds 20 \\
        --probe-seconds 8                               # a quick run

Needs pyepics and numpy (the interop venvs under target/tmp/ have both).
"""
import os

# libca reads these when its context is created, so they must be set before `import epics`.
CA_ENV = {
    "EPICS_CA_ADDR_LIST": "127.0.0.1",
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
}
os.environ.update(CA_ENV)

import argparse
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PREFIX = "ad:"
# PVs the latency client reads in turn: one that changes every frame, the capture counter, a
# readback and a setpoint (different code paths in a server: posted vs stored values).
LATENCY_PVS = ["cam1:ArrayCounter_RBV", "HDF1:NumCaptured_RBV", "cam1:Acquire_RBV",
               "cam1:AcquireTime"]
COMPRESSIONS = {"none": 0, "bslz4": 5}
# Setpoints areaDetector gives no _RBV (ADBase.template): read back the setpoint itself.
NO_RBV = {"cam1:WaitForPlugins"}
THRESHOLD_MS = 50.0


# ---- helper processes ----------------------------------------------------------------------

def probe_main(argv):
    """Child process: read LATENCY_PVS in turn on open channels at RATE Hz for SECONDS (or
    until the file STOP exists) and write [[t, pv index, seconds or -1 for a timeout], ...]."""
    out, seconds, rate, stop = argv[0], float(argv[1]), float(argv[2]), Path(argv[3])
    import epics
    pvs = [epics.PV(PREFIX + n, auto_monitor=False) for n in LATENCY_PVS]
    for pv in pvs:
        if not pv.wait_for_connection(timeout=10):
            sys.exit(f"probe: {pv.pvname} did not connect")
    for pv in pvs:  # the first get of a channel fetches its control info; keep it out
        pv.get(use_monitor=False, timeout=5)
    samples = []
    period = 1.0 / rate
    start = time.monotonic()
    next_t = start
    i = 0
    while True:
        now = time.monotonic()
        if now - start >= seconds or (i % 50 == 0 and stop.exists()):
            break
        if now < next_t:
            time.sleep(next_t - now)
        next_t += period
        if next_t < time.monotonic() - 1.0:  # fell far behind (a long stall): don't burst
            next_t = time.monotonic()
        k = i % len(pvs)
        t0 = time.perf_counter()
        value = pvs[k].get(use_monitor=False, timeout=5)
        dt = time.perf_counter() - t0
        samples.append([time.time(), k, dt if value is not None else -1.0])
        i += 1
    Path(out).write_text(json.dumps(samples))


def fresh_main(argv):
    """Child process: time a caget from a new client (new context, search, TCP circuit,
    channel, read), then a second new channel on that circuit. Prints JSON."""
    import epics
    from epics import ca
    t0 = time.perf_counter()
    ca.initialize_libca()
    t_ctx = time.perf_counter() - t0
    result = {"context_s": t_ctx}
    for key, name in (("first_s", "cam1:ArrayCounter_RBV"), ("second_s", "HDF1:NumCaptured_RBV")):
        t0 = time.perf_counter()
        chid = ca.create_channel(PREFIX + name, auto_cb=False)
        ok = ca.connect_channel(chid, timeout=5)
        value = ca.get(chid, timeout=5) if ok else None
        result[key] = time.perf_counter() - t0 if value is not None else None
    print(json.dumps(result))


# ---- the daemon ----------------------------------------------------------------------------

class Daemon:
    """`detflow serve`, its stderr in a log file, and /proc readings of it."""

    def __init__(self, binary, scratch, args, extra=()):
        self.log_path = scratch / "daemon.log"
        self.log = open(self.log_path, "w")
        cmd = [str(binary), "serve", "--data-root", str(scratch)]
        if args.size:
            cmd += ["--size", args.size]
        cmd += list(extra)
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **CA_ENV), cwd=scratch)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def status(self):
        """VmRSS (KiB), threads, open fds and CPU seconds (user + system)."""
        fields = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                fields[k] = v.split()
        with open(f"/proc/{self.pid}/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return {
            "rss_kib": int(fields["VmRSS"][0]),
            "hwm_kib": int(fields["VmHWM"][0]),
            "threads": int(fields["Threads"][0]),
            "fds": len(os.listdir(f"/proc/{self.pid}/fd")),
            "cpu_s": (int(stat[11]) + int(stat[12])) / tick,
        }

    def stop(self, timeout=60):
        """SIGTERM, wait; the exit status (None: it had to be killed)."""
        if not self.alive():
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        finally:
            self.log.flush()

    def log_lines(self, levels=("WARN", "ERROR")):
        text = self.log_path.read_text(errors="replace")
        return [l for l in text.splitlines() if any(f" {lv} " in l or l.startswith(lv)
                                                    for lv in levels)]


def own_cpu():
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """CPU use over an interval, in % of one CPU: the daemon, these client processes, the
    whole machine and everything else on it (other users' builds, say)."""

    def __init__(self, daemon):
        self.d = daemon
        self.start = self.read()

    def read(self):
        busy, total = system_cpu()
        return time.monotonic(), self.d.status()["cpu_s"], own_cpu(), busy, total

    def result(self):
        t0, d0, c0, b0, n0 = self.start
        t1, d1, c1, b1, n1 = self.read()
        ncpu = os.cpu_count()
        wall = t1 - t0
        machine = 100 * ncpu * (b1 - b0) / max(1, n1 - n0)
        daemon, client = 100 * (d1 - d0) / wall, 100 * (c1 - c0) / wall
        return {"daemon_cpu_pct": daemon, "client_cpu_pct": client, "machine_cpu_pct": machine,
                "other_cpu_pct": max(0.0, machine - daemon - client)}


def system_cpu():
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def proc_cpu_s(pid):
    """utime + stime of a process in seconds (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Samples the daemon every `every` seconds (tagged with the current phase); every second
    it notes CPU use (the machine's, the daemon's, the clients' in `client_pids`) and the free
    space under `scratch`, and sets `disk_low` under `min_free` bytes."""

    def __init__(self, daemon, scratch, every, min_free):
        super().__init__(daemon=True)
        self.d, self.scratch, self.every, self.min_free = daemon, scratch, every, min_free
        self.samples = []
        self.phase = "start"
        self.disk_low = threading.Event()
        self.min_free_seen = None
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.client_pids = {os.getpid()}
        self.cpu = []  # [t, machine busy s, daemon s, clients s], cumulative
        self._last = {}
        self._clients_s = 0.0

    def note_cpu(self):
        busy = system_cpu()[0] / os.sysconf("SC_CLK_TCK")
        clients = 0.0
        for pid in list(self.client_pids):
            now = proc_cpu_s(pid)
            if now is None:
                self.client_pids.discard(pid)
                continue
            clients += now - self._last.get(pid, 0.0)  # new pids: started within the run
            self._last[pid] = now
        self._clients_s += clients
        d = self.d.status()["cpu_s"] if self.d.alive() else None
        if d is not None:
            with self.lock:
                self.cpu.append([time.time(), busy, d, self._clients_s])

    def cpu_between(self, t0, t1):
        """Machine, daemon, clients and other CPU between two wall-clock times, in % of one
        CPU, from the per-second notes (None when fewer than two fall in the window)."""
        with self.lock:
            w = [c for c in self.cpu if t0 <= c[0] <= t1]
        if len(w) < 2:
            return None
        dt = w[-1][0] - w[0][0]
        machine, daemon, clients = (100 * (w[-1][k] - w[0][k]) / dt for k in (1, 2, 3))
        return {"machine": machine, "daemon": daemon, "clients": clients,
                "other": max(0.0, machine - daemon - clients)}

    def sample(self, phase=None):
        if not self.d.alive():
            return None
        s = self.d.status()
        s["t"] = time.monotonic()
        s["phase"] = phase or self.phase
        with self.lock:
            self.samples.append(s)
        return s

    def run(self):
        next_sample = time.monotonic()
        while not self.halt.wait(1.0):
            free = shutil.disk_usage(self.scratch).free
            seen = self.min_free_seen
            self.min_free_seen = free if seen is None else min(free, seen)
            if free < self.min_free:
                self.disk_low.set()
            self.note_cpu()
            if time.monotonic() >= next_sample:
                next_sample += self.every
                self.sample()


# ---- Channel Access control ----------------------------------------------------------------

class Ioc:
    """The daemon's PVs, from this (controlling) process."""

    def __init__(self, epics):
        self.epics = epics
        self.pvs = {}

    def pv(self, name):
        if name not in self.pvs:
            pv = self.epics.PV(PREFIX + name)
            if not pv.wait_for_connection(timeout=10):
                raise RuntimeError(f"{PREFIX}{name} did not connect")
            self.pvs[name] = pv
        return self.pvs[name]

    def get(self, name, as_string=False):
        value = self.pv(name).get(use_monitor=False, as_string=as_string, timeout=10)
        if value is None:
            raise RuntimeError(f"caget {PREFIX}{name} timed out")
        return value

    def put(self, name, value, check=True):
        """caput with a put-callback (settings complete at once), then read the readback."""
        status = self.pv(name).put(value, wait=True, timeout=10)
        if status is None or status < 0:
            raise RuntimeError(f"caput {PREFIX}{name} = {value!r} failed or timed out")
        rbv = name if name in NO_RBV else name + "_RBV"
        if check:
            got = self.get(rbv, as_string=isinstance(value, str))
            if isinstance(value, str):
                ok = got.rstrip("/") == value.rstrip("/")
            else:
                ok = abs(float(got) - float(value)) < 1e-9
            if not ok:
                raise RuntimeError(f"{PREFIX}{rbv} reads {got!r} after caput {value!r}")

    def put_nowait(self, name, value):
        """caput without completion, for Acquire and Capture (their callbacks complete only
        when the run or the capture ends)."""
        self.pv(name).put(value, wait=False)

    def wait_for(self, name, want, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.get(name) == want:
                return True
            time.sleep(0.002)
        raise RuntimeError(f"{PREFIX}{name} did not reach {want} within {timeout} s "
                           f"(reads {self.get(name)!r})")


def wait_until_served(ioc, daemon, timeout=30):
    """Wait until the daemon serves its PVs (cam1:Acquire connects)."""
    end = time.monotonic() + timeout
    while True:
        if not daemon.alive():
            raise RuntimeError(f"the daemon exited at start ({daemon.proc.returncode})")
        try:
            ioc.pv("cam1:Acquire")
            return
        except RuntimeError:
            if time.monotonic() > end:
                raise


def configure(ioc, data_dir, compression, image_mode, num_images, num_capture):
    """The settings of a write, in the order a client sends them."""
    ioc.put("cam1:Acquire", 0, check=False)
    ioc.put("HDF1:Capture", 0, check=False)
    ioc.put("cam1:ImageMode", image_mode)
    ioc.put("cam1:NumImages", num_images)
    ioc.put("cam1:AcquireTime", 0.0)
    ioc.put("cam1:AcquirePeriod", 0.0)
    ioc.put("cam1:ArrayCallbacks", 1)
    ioc.put("cam1:WaitForPlugins", 1)
    ioc.put("HDF1:EnableCallbacks", 1)
    ioc.put("HDF1:CreateDirectory", -1)
    ioc.put("HDF1:FilePath", str(data_dir) + "/")
    ioc.put("HDF1:FileName", "fig")
    ioc.put("HDF1:AutoIncrement", 1)
    ioc.put("HDF1:FileWriteMode", 2)
    ioc.put("HDF1:NumCapture", num_capture)
    ioc.put("HDF1:Compression", COMPRESSIONS[compression])
    if ioc.get("HDF1:FilePathExists_RBV") != 1:
        raise RuntimeError(f"HDF1:FilePathExists_RBV is 0 for {data_dir}: "
                           f"{ioc.get('HDF1:WriteMessage', as_string=True)!r}")


class Deleter(threading.Thread):
    """Deletes closed files off the control loop: unlinking a few GB of freshly written file
    takes hundreds of ms, which would otherwise delay the next Capture = 1."""

    def __init__(self):
        super().__init__(daemon=True)
        self.queue = queue.Queue()
        self.times = []
        self.errors = []
        self.start()

    def run(self):
        while True:
            name = self.queue.get()
            t0 = time.monotonic()
            try:
                os.remove(name)
                self.times.append(time.monotonic() - t0)
            except OSError as e:
                self.errors.append(f"{name}: {e}")
            self.queue.task_done()


DELETER = None


def close_file(ioc, totals):
    """After a capture closed: count it, check it, have it deleted."""
    global DELETER
    DELETER = DELETER or Deleter()
    n = int(ioc.get("HDF1:NumCaptured_RBV"))
    name = ioc.get("HDF1:FullFileName_RBV", as_string=True)
    totals["files"] += 1
    totals["frames_written"] += n
    if ioc.get("HDF1:WriteStatus") != 0:
        totals["write_errors"].append(ioc.get("HDF1:WriteMessage", as_string=True))
    try:
        totals["bytes_on_disk"] += os.path.getsize(name)
        DELETER.queue.put(name)
    except OSError as e:
        totals["missing_files"].append(f"{name}: {e}")
    return n


def deletions(totals):
    """Wait for the queued deletions; their timings and errors go into `totals`."""
    if DELETER:
        DELETER.queue.join()
        totals["delete_s"] = DELETER.times[:]
        totals["missing_files"] += DELETER.errors
        DELETER.times.clear()
        DELETER.errors.clear()


def arm(ioc, totals):
    """Capture = 1 and wait for Capture_RBV = 1: the daemon opens the file meanwhile."""
    t0 = time.monotonic()
    ioc.put_nowait("HDF1:Capture", 1)
    ioc.wait_for("HDF1:Capture_RBV", 1, 10)
    totals.setdefault("open_s", []).append(time.monotonic() - t0)


def spread_ms(values):
    a = np.asarray(values) * 1000
    return ({"n": int(a.size), "median": float(np.median(a)), "max": float(a.max())}
            if a.size else None)


def summarize_times(totals):
    """The lists of per-file timings in `totals`, as median and max in ms (once the queued
    deletions are done)."""
    deletions(totals)
    for key in ("open_s", "delete_s", "rearm_s"):
        if key in totals:
            totals[key.replace("_s", "_ms")] = spread_ms(totals.pop(key))


def frame_bytes(ioc):
    return int(ioc.get("cam1:ArraySize_RBV"))


def counters(ioc):
    return {
        "array_counter": int(ioc.get("cam1:ArrayCounter_RBV")),
        "dropped_arrays": int(ioc.get("HDF1:DroppedArrays_RBV")),
        "dropped_frames": int(ioc.get("cam1:DroppedFrames_RBV")),
    }


def continuous_write(ioc, sampler, data_dir, compression, seconds, frames_per_file,
                     on_running=None, on_stopping=None):
    """Acquire continuously and write Stream captures of `frames_per_file` frames back to back
    (each closed file is deleted, then Capture = 1 again) for `seconds`. `on_running` is called
    once acquiring, `on_stopping` before it stops. Returns the totals."""
    configure(ioc, data_dir, compression, image_mode=2, num_images=1,
              num_capture=frames_per_file)
    before = counters(ioc)
    totals = {"files": 0, "frames_written": 0, "bytes_on_disk": 0, "write_errors": [],
              "missing_files": [], "rearm_s": [], "array_rate": [], "stopped_by": "time"}
    capture_rbv = ioc.pv("HDF1:Capture_RBV")  # monitored: the close is seen at once
    arm(ioc, totals)
    meter = CpuMeter(sampler.d)
    t0 = time.monotonic()
    ioc.put_nowait("cam1:Acquire", 1)
    ioc.wait_for("cam1:Acquire_RBV", 1, 10)
    if on_running:
        on_running()
    next_rate = t0 + 1.0
    while time.monotonic() - t0 < seconds:
        if sampler.disk_low.is_set():
            totals["stopped_by"] = "disk guard"
            break
        if not sampler.d.alive():
            raise RuntimeError("the daemon exited during the write phase")
        now = time.monotonic()
        if now >= next_rate:
            next_rate += 1.0
            totals["array_rate"].append(float(ioc.get("cam1:ArrayRate_RBV")))
        if capture_rbv.get() == 0 and ioc.get("HDF1:Capture_RBV") == 0:
            t_closed = time.monotonic()
            close_file(ioc, totals)
            arm(ioc, totals)
            totals["rearm_s"].append(time.monotonic() - t_closed)
        time.sleep(0.002)
    if on_stopping:
        on_stopping()
    ioc.put_nowait("cam1:Acquire", 0)
    ioc.wait_for("cam1:AcquireBusy", 0, 60)
    elapsed = time.monotonic() - t0
    ioc.put_nowait("HDF1:Capture", 0)
    ioc.wait_for("HDF1:Capture_RBV", 0, 60)
    close_file(ioc, totals)
    totals.update(meter.result())
    after = counters(ioc)
    totals.update({
        "compression": compression,
        "seconds": elapsed,
        "frames_acquired": after["array_counter"] - before["array_counter"],
        "dropped_arrays": [before["dropped_arrays"], after["dropped_arrays"]],
        "dropped_frames": [before["dropped_frames"], after["dropped_frames"]],
        "write_message": ioc.get("HDF1:WriteMessage", as_string=True),
    })
    totals["fps_written"] = totals["frames_written"] / elapsed
    return totals


def cycles(ioc, sampler, data_dir, compression, minutes, frames):
    """Back-to-back Multiple acquisitions of `frames` frames, each into its own Stream capture
    (Capture = 1, then Acquire = 1 with a put-callback that completes when every frame is
    written), each file deleted once closed."""
    configure(ioc, data_dir, compression, image_mode=1, num_images=frames, num_capture=frames)
    totals = {"files": 0, "frames_written": 0, "bytes_on_disk": 0, "write_errors": [],
              "missing_files": [], "short_files": 0, "cycle_s": [], "stopped_by": "time"}
    acquire = ioc.pv("cam1:Acquire")
    before = counters(ioc)
    t0 = time.monotonic()
    while time.monotonic() - t0 < minutes * 60:
        if sampler.disk_low.is_set():
            totals["stopped_by"] = "disk guard"
            break
        if not sampler.d.alive():
            raise RuntimeError("the daemon exited during the acquiring phase")
        c0 = time.monotonic()
        arm(ioc, totals)
        # A put-callback, as ophyd's set(): it completes once every frame is written
        # (WaitForPlugins = Yes). Meanwhile one RSS sample half-way through the run.
        acquire.put(1, use_complete=True)
        mid = None
        while not acquire.put_complete:
            if time.monotonic() - c0 > 120:
                raise RuntimeError("caput cam1:Acquire = 1 did not complete in 120 s")
            if mid is None and ioc.get("HDF1:NumCaptured_RBV") >= frames // 2:
                mid = sampler.sample("acquire-midrun")
            time.sleep(0.02)
        ioc.wait_for("HDF1:Capture_RBV", 0, 30)
        if close_file(ioc, totals) != frames:
            totals["short_files"] += 1
        totals["cycle_s"].append(time.monotonic() - c0)
        sampler.sample("acquire-between")
    after = counters(ioc)
    totals.update({
        "seconds": time.monotonic() - t0,
        "frames_acquired": after["array_counter"] - before["array_counter"],
        "dropped_arrays": [before["dropped_arrays"], after["dropped_arrays"]],
        "dropped_frames": [before["dropped_frames"], after["dropped_frames"]],
    })
    return totals


# ---- statistics ----------------------------------------------------------------------------

def latency_stats(seconds):
    a = np.asarray(seconds) * 1000.0
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "median_ms": float(np.median(a)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "p999_ms": float(np.percentile(a, 99.9)),
        "max_ms": float(a.max()),
        "over_50ms": int((a > THRESHOLD_MS).sum()),
    }


def probe_stats(samples, sampler):
    ok = [s for s in samples if s[2] >= 0]
    out = {"all": latency_stats([s[2] for s in ok]),
           "timeouts": len(samples) - len(ok),
           "per_pv": {name: latency_stats([s[2] for s in ok if s[1] == k])
                      for k, name in enumerate(LATENCY_PVS)}}
    worst = sorted(ok, key=lambda s: -s[2])[:5]
    out["worst"] = [{"at": time.strftime("%H:%M:%S", time.localtime(s[0])) +
                     f".{int(s[0] % 1 * 1000):03d}",
                     "pv": LATENCY_PVS[s[1]], "ms": s[2] * 1000} for s in worst]
    # Minute by minute, beside what the CPUs were doing then: a slow get while other
    # processes kept the CPUs busy says less about the daemon than one on a quiet machine.
    out["minutes"] = []
    if ok:
        t0 = ok[0][0]
        last = int((ok[-1][0] - t0) // 60)
        for m in range(last + 1):
            a, b = t0 + 60 * m, min(t0 + 60 * (m + 1), ok[-1][0])
            v = [s[2] for s in ok if a <= s[0] < b or (m == last and s[0] == b)]
            if v:
                out["minutes"].append({"minute": m, **latency_stats(v),
                                       "cpu": sampler.cpu_between(a, b)})
    return out


def rss_stats(samples):
    """start, end, min, max (KiB) and the least-squares slope (KiB/min) of samples."""
    if len(samples) < 2:
        return None
    t = np.array([s["t"] for s in samples])
    r = np.array([s["rss_kib"] for s in samples], dtype=float)
    slope = np.polyfit((t - t[0]) / 60.0, r, 1)[0]
    return {"n": len(samples), "minutes": float((t[-1] - t[0]) / 60), "start_kib": int(r[0]),
            "end_kib": int(r[-1]), "min_kib": int(r.min()), "max_kib": int(r.max()),
            "slope_kib_per_min": float(slope),
            "threads": [min(s["threads"] for s in samples), max(s["threads"] for s in samples)],
            "fds": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)]}


def rss_phase(sampler, phase):
    with sampler.lock:
        s = [x for x in sampler.samples if x["phase"] == phase]
    if not s:
        return None
    t0 = s[0]["t"]
    return {"all": rss_stats(s), "after_first_minute": rss_stats([x for x in s
                                                                  if x["t"] - t0 >= 59.5]),
            "series_mib": [round(x["rss_kib"] / 1024, 1) for x in s]}


# ---- phases --------------------------------------------------------------------------------

def start_probe(sampler, scratch, tag, seconds, rate):
    out = scratch / f"probe-{tag}.json"
    stop = scratch / f"probe-{tag}.stop"
    stop.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, "_probe", str(out), str(seconds),
                             str(rate), str(stop)], env=dict(os.environ, **CA_ENV))
    sampler.client_pids.add(proc.pid)
    return proc, out, stop


def finish_probe(probe, timeout):
    proc, out, stop = probe
    stop.touch()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError("the latency client did not finish")
    if proc.returncode != 0:
        raise RuntimeError(f"the latency client exited {proc.returncode}")
    return json.loads(out.read_text())


class FreshConnects(threading.Thread):
    """Times `count` caget's from new client processes, spread over `seconds`."""

    def __init__(self, count, seconds, sampler):
        super().__init__(daemon=True)
        self.count, self.seconds, self.sampler = count, seconds, sampler
        self.results = []
        self.halt = threading.Event()

    def run(self):
        gap = self.seconds / (self.count + 1)
        for _ in range(self.count):
            if self.halt.wait(gap):
                return
            proc = subprocess.Popen([sys.executable, __file__, "_fresh"], text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=dict(os.environ, **CA_ENV))
            self.sampler.client_pids.add(proc.pid)
            out, err = proc.communicate(timeout=60)
            lines = [l for l in out.splitlines() if l.startswith("{")]
            self.results.append(json.loads(lines[-1]) if lines else {"error": err[-300:]})

    def stats(self):
        out = {"n": len(self.results)}
        for key in ("context_s", "first_s", "second_s"):
            v = [r[key] for r in self.results if r.get(key) is not None]
            out[key.replace("_s", "_ms")] = ([round(x * 1000, 2) for x in v])
        out["failures"] = [r for r in self.results if "error" in r or r.get("first_s") is None]
        return out


def idle_phase(args, ioc, sampler, scratch, result):
    """Nothing acquires; a client polls a few PVs, another monitors ArrayCounter_RBV."""
    seconds = args.idle_minutes * 60
    counts = {"n": 0}
    mon = ioc.epics.PV(PREFIX + "cam1:ArrayCounter_RBV", auto_monitor=True,
                       callback=lambda **kw: counts.__setitem__("n", counts["n"] + 1))
    mon.wait_for_connection(timeout=10)
    fresh = FreshConnects(args.fresh_connects, seconds, sampler)
    sampler.phase = "idle"
    sampler.sample()
    load0 = os.getloadavg()
    meter = CpuMeter(sampler.d)
    probe = start_probe(sampler, scratch, "idle", seconds, args.idle_poll_hz)
    fresh.start()
    time.sleep(seconds)
    sampler.sample()
    samples = finish_probe(probe, 30)
    fresh.halt.set()
    fresh.join(70)
    mon.clear_callbacks()
    mon.disconnect()
    result["idle"] = {**meter.result(), "seconds": seconds, "poll_hz": args.idle_poll_hz,
                      "latency": probe_stats(samples, sampler), "fresh": fresh.stats(),
                      "monitor_updates": counts["n"], "load": [load0, os.getloadavg()],
                      "rss": rss_phase(sampler, "idle")}


def acquire_phase(args, ioc, sampler, scratch, data_dir, result):
    counts = {"n": 0}
    mon = ioc.epics.PV(PREFIX + "cam1:ArrayCounter_RBV", auto_monitor=True,
                       callback=lambda **kw: counts.__setitem__("n", counts["n"] + 1))
    mon.wait_for_connection(timeout=10)
    sampler.phase = "acquire"
    sampler.sample()
    load0 = os.getloadavg()
    meter = CpuMeter(sampler.d)
    probe = start_probe(sampler, scratch, "acquire", args.acquire_minutes * 60 + 60,
                        args.cycle_poll_hz)
    totals = cycles(ioc, sampler, data_dir, args.cycle_codec, args.acquire_minutes,
                    args.cycle_frames)
    samples = finish_probe(probe, 30)
    sampler.sample()
    totals.update(meter.result())
    totals["latency"] = probe_stats(samples, sampler)
    totals["poll_hz"] = args.cycle_poll_hz
    mon.clear_callbacks()
    mon.disconnect()
    summarize_times(totals)
    c = np.array(totals.pop("cycle_s"))
    totals.update({
        "cycles": int(c.size),
        "cycle_s": {"median": float(np.median(c)), "min": float(c.min()), "max": float(c.max())}
        if c.size else None,
        "fps_written": totals["frames_written"] / totals["seconds"],
        "compression": args.cycle_codec, "frames_per_cycle": args.cycle_frames,
        "monitor_updates": counts["n"], "load": [load0, os.getloadavg()],
        "rss": rss_phase(sampler, "acquire"),
        "rss_midrun": rss_phase(sampler, "acquire-midrun"),
        "rss_between": rss_phase(sampler, "acquire-between"),
    })
    result["acquire"] = totals


def write_phase(args, ioc, sampler, scratch, data_dir, result):
    """Find the faster codec, then write with it for --write-seconds under the latency
    client."""
    sampler.phase = "write"
    probes = {}
    raw = frame_bytes(ioc)
    for codec in args.codecs:
        t = continuous_write(ioc, sampler, data_dir, codec, args.probe_seconds,
                             args.frames_per_file or max(100, int(args.file_gb * 1e9 / raw)))
        summarize_times(t)
        probes[codec] = t
    best = max(probes, key=lambda c: probes[c]["fps_written"])
    per_file = args.frames_per_file
    if per_file == 0:  # about --file-gb on disk at the chosen codec's ratio
        on_disk = probes[best]["bytes_on_disk"] / max(1, probes[best]["frames_written"])
        per_file = max(100, int(args.file_gb * 1e9 / max(on_disk, 1)))
    load0 = os.getloadavg()
    holder = {}
    fresh = FreshConnects(args.fresh_connects, args.write_seconds, sampler)

    def running():
        time.sleep(args.settle_seconds)  # past the ring's fill and the first file's open
        holder["probe"] = start_probe(sampler, scratch, "write",
                                      args.write_seconds - args.settle_seconds, args.get_hz)
        fresh.start()

    def stopping():
        holder["samples"] = finish_probe(holder["probe"], 30)
        fresh.halt.set()
        fresh.join(70)

    t = continuous_write(ioc, sampler, data_dir, best, args.write_seconds, per_file,
                         on_running=running, on_stopping=stopping)
    t["frames_per_file"] = per_file
    samples = holder["samples"]
    summarize_times(t)
    rates = t.pop("array_rate")
    t["array_rate_rbv"] = ({"mean": float(np.mean(rates)), "min": float(np.min(rates)),
                            "max": float(np.max(rates))} if rates else None)
    for p in probes.values():
        r = p.pop("array_rate")
        p["array_rate_rbv_mean"] = float(np.mean(r)) if r else None
    result["write"] = {"probes": probes, "chosen": best, "run": t,
                       "latency": probe_stats(samples, sampler), "fresh": fresh.stats(),
                       "get_hz": args.get_hz, "load": [load0, os.getloadavg()],
                       "rss": rss_phase(sampler, "write")}


# ---- the report ----------------------------------------------------------------------------

def fmt_lat(s):
    if not s or not s.get("n"):
        return "no samples"
    return (f"n={s['n']}  median {s['median_ms']:.2f} ms  p90 {s['p90_ms']:.2f}  "
            f"p99 {s['p99_ms']:.2f}  p99.9 {s['p999_ms']:.2f}  max {s['max_ms']:.1f} ms  "
            f"(>50 ms: {s['over_50ms']})")


def fmt_rss(r):
    if not r:
        return "    (fewer than 2 samples)"
    mib = lambda k: f"{k / 1024:.1f}"
    return (f"    {r['n']} samples over {r['minutes']:.1f} min: start {mib(r['start_kib'])} MiB, "
            f"end {mib(r['end_kib'])}, min {mib(r['min_kib'])}, max {mib(r['max_kib'])}, "
            f"slope {r['slope_kib_per_min']:+.1f} KiB/min; threads {r['threads'][0]}-"
            f"{r['threads'][1]}, fds {r['fds'][0]}-{r['fds'][1]}")


def fmt_times(t):
    """The per-file timings."""
    parts = []
    for key, what in (("open_ms", "Capture=1 until Capture_RBV=1 (the daemon opens the file)"),
                      ("delete_ms", "deleting a closed file (this script, in the "
                                    "background)"),
                      ("rearm_ms", "Capture_RBV=0 seen until Capture_RBV=1 again")):
        if t.get(key):
            parts.append(f"{what}: median {t[key]['median']:.1f} ms, max {t[key]['max']:.1f}")
    return "; ".join(parts)


def fmt_minutes(lat):
    """One line per minute of a latency client's run, with the CPU use then."""
    lines = []
    for m in lat.get("minutes", []):
        c = m["cpu"]
        cpu = (f"CPU % daemon {c['daemon']:.0f}, clients {c['clients']:.0f}, other "
               f"{c['other']:.0f}" if c else "CPU -")
        lines.append(f"      min {m['minute']:2d}: n={m['n']:5d} median {m['median_ms']:.2f} "
                     f"p99 {m['p99_ms']:6.2f} max {m['max_ms']:6.1f} ms >50 ms: "
                     f"{m['over_50ms']:2d} | {cpu}")
    return lines


def fmt_slowest(lat):
    return "    slowest: " + ", ".join(f"{x['ms']:.1f} ms ({x['pv']} at {x['at']})"
                                      for x in lat["worst"])


def fmt_cpu(c):
    return (f"CPU in % of one CPU: daemon {c['daemon_cpu_pct']:.0f}, these clients "
            f"{c['client_cpu_pct']:.0f}, other processes {c['other_cpu_pct']:.0f} "
            f"(machine {c['machine_cpu_pct']:.0f} of {100 * os.cpu_count()})")


def fmt_load(load):
    a, b = load
    return f"load average {a[0]:.2f} {a[1]:.2f} {a[2]:.2f} -> {b[0]:.2f} {b[1]:.2f} {b[2]:.2f}"


def fmt_fresh(f):
    if not f["n"]:
        return "  fresh caget: none"
    med = lambda v: f"{np.median(v):.1f}" if v else "-"
    return (f"  fresh caget from a new process (n={f['n']}): search+circuit+channel+read "
            f"median {med(f['first_ms'])} ms, max {max(f['first_ms'] or [0]):.1f} ms; "
            f"a second new channel on that circuit median {med(f['second_ms'])} ms, "
            f"max {max(f['second_ms'] or [0]):.1f} ms; failures {len(f['failures'])}")


def report(r):
    out = []
    p = out.append
    p("detflow serve: figures over Channel Access (benches/serve_figures.py)")
    p(f"  when {r['when']}; host {r['host']}; {r['cpus']} CPUs; {r['uptime']}")
    p(f"  daemon: {' '.join(r['daemon_cmd'])} (pid {r['pid']}); frame {r['frame']}")
    p(f"  binary: {r['binary']}")
    p(f"  client: pyepics {r['pyepics']}, latency client reads {', '.join(LATENCY_PVS)} "
      f"in turn on open channels")
    if "write" in r:
        w = r["write"]
        p("")
        p("(a) caget round trips while writing at the highest sustained rate")
        for c, t in w["probes"].items():
            p(f"  rate probe {c:5s}: {t['fps_written']:.0f} frames/s written "
              f"({t['frames_written']} in {t['seconds']:.1f} s, "
              f"{t['bytes_on_disk'] / t['seconds'] / 1e6:.0f} MB/s to disk, "
              f"ArrayRate_RBV mean {t['array_rate_rbv_mean'] or 0:.0f}), DroppedArrays "
              f"{t['dropped_arrays'][0]}->"
              f"{t['dropped_arrays'][1]}, DroppedFrames {t['dropped_frames'][0]}->"
              f"{t['dropped_frames'][1]}")
            p(f"    {fmt_cpu(t)}")
        t = w["run"]
        p(f"  write phase with {w['chosen']}: {t['seconds']:.1f} s, {t['frames_written']} "
          f"frames written of {t['frames_acquired']} acquired in {t['files']} files "
          f"(Stream, NumCapture {t['frames_per_file']}; frames between a close and "
          f"the next Capture = 1 are not captured), {t['fps_written']:.0f} frames/s, "
          f"{t['bytes_on_disk'] / t['seconds'] / 1e6:.0f} MB/s to disk; stopped by "
          f"{t['stopped_by']}")
        if t["array_rate_rbv"]:
            a = t["array_rate_rbv"]
            p(f"    cam1:ArrayRate_RBV mean {a['mean']:.0f}, min {a['min']:.0f}, "
              f"max {a['max']:.0f} frames/s")
        p(f"    between files: {fmt_times(t)}")
        p(f"    HDF1:DroppedArrays_RBV {t['dropped_arrays'][0]}->{t['dropped_arrays'][1]}, "
          f"cam1:DroppedFrames_RBV {t['dropped_frames'][0]}->{t['dropped_frames'][1]}, "
          f"write errors {len(t['write_errors'])}, WriteMessage {t['write_message']!r}")
        p(f"    {fmt_cpu(t)}; {fmt_load(w['load'])}")
        lat = w["latency"]
        p(f"  caget on open channels, {w['get_hz']:.0f} gets/s for the phase minus "
          f"{r['args']['settle_seconds']} s: {fmt_lat(lat['all'])}; timeouts {lat['timeouts']}")
        for name, s in lat["per_pv"].items():
            p(f"    {name:24s} {fmt_lat(s)}")
        p(fmt_slowest(lat))
        out.extend(fmt_minutes(lat))
        p(fmt_fresh(w["fresh"]))
        ok = lat["all"].get("n") and lat["all"]["p99_ms"] < THRESHOLD_MS and not lat["timeouts"]
        p(f"  => p99 {lat['all'].get('p99_ms', float('nan')):.2f} ms: "
          f"{'under' if ok else 'NOT under'} {THRESHOLD_MS:.0f} ms")
    if "idle" in r or "acquire" in r:
        p("")
        p(f"(b) daemon RSS (VmRSS every {r['args']['sample_seconds']} s)")
    if "idle" in r:
        i = r["idle"]
        p(f"  idle {i['seconds'] / 60:.1f} min (a client polls {', '.join(LATENCY_PVS)} at "
          f"{i['poll_hz']:.0f} gets/s; a monitor on cam1:ArrayCounter_RBV got "
          f"{i['monitor_updates']} updates)")
        p(f"    {fmt_cpu(i)}; {fmt_load(i['load'])}")
        p(fmt_rss(i["rss"]["all"]))
        p("  excluding the first minute:")
        p(fmt_rss(i["rss"]["after_first_minute"]))
        p(f"  idle caget on open channels: {fmt_lat(i['latency']['all'])}; timeouts "
          f"{i['latency']['timeouts']}")
        p(fmt_slowest(i["latency"]))
        out.extend(fmt_minutes(i["latency"]))
        p(fmt_fresh(i["fresh"]))
    if "acquire" in r:
        a = r["acquire"]
        cs = a["cycle_s"] or {"median": 0, "max": 0}
        p(f"  acquiring {a['seconds'] / 60:.1f} min: {a['cycles']} cycles of Capture=1 + "
          f"Acquire=1 (Multiple, NumImages = NumCapture = {a['frames_per_cycle']}, "
          f"{a['compression']}, period 0, put-callback), file deleted after each; cycle "
          f"median {cs['median']:.2f} s, max {cs['max']:.2f} s; {a['frames_written']} frames "
          f"written ({a['fps_written']:.0f}/s overall), short files {a['short_files']}, "
          f"DroppedArrays {a['dropped_arrays'][0]}->{a['dropped_arrays'][1]}, DroppedFrames "
          f"{a['dropped_frames'][0]}->{a['dropped_frames'][1]}, write errors "
          f"{len(a['write_errors'])}; monitor on cam1:ArrayCounter_RBV got "
          f"{a['monitor_updates']} updates")
        p(f"    {fmt_cpu(a)}; {fmt_load(a['load'])}")
        p(f"    between files: {fmt_times(a)}")
        p(f"  caget on open channels meanwhile ({a['poll_hz']:.0f} gets/s): "
          f"{fmt_lat(a['latency']['all'])}; timeouts {a['latency']['timeouts']}")
        p(fmt_slowest(a["latency"]))
        out.extend(fmt_minutes(a["latency"]))
        p(f"  every {r['args']['sample_seconds']} s (each sample lands in a run or between "
          f"runs: a run holds its frame ring, so these jump between two levels):")
        p(fmt_rss(a["rss"]["all"]))
        p("   excluding the first minute:")
        p(fmt_rss(a["rss"]["after_first_minute"]))
        for key, what in (("rss_midrun", "in each run, once half its frames were written"),
                          ("rss_between", "after each run, once its file was closed")):
            if a.get(key):
                p(f"  {what}:")
                p(fmt_rss(a[key]["all"]))
                p("   excluding the first minute:")
                p(fmt_rss(a[key]["after_first_minute"]))
        p("  RSS every sample (MiB): " + " ".join(str(x) for x in a["rss"]["series_mib"]))
    if "idle" in r:
        p("  idle RSS every sample (MiB): " +
          " ".join(str(x) for x in r["idle"]["rss"]["series_mib"]))
    if "write" in r and r["write"].get("rss"):
        p(f"  write phase (rate probes + latency run), every sample:")
        p(fmt_rss(r["write"]["rss"]["all"]))
    p("")
    p(f"daemon: final RSS {r['final']['rss_kib'] / 1024:.1f} MiB (peak VmHWM "
      f"{r['final']['hwm_kib'] / 1024:.1f} MiB), threads {r['final']['threads']}, "
      f"fds {r['final']['fds']}; SIGTERM -> exit status {r['exit_status']} "
      f"({'ok' if r['exit_status'] == 0 else 'NOT 0'}) in {r['stop_s']:.2f} s; "
      f"min free disk {r['min_free_gb']:.1f} GB")
    p(f"  files left under data/ after the last close: {len(r['files_left'])}"
      + (f" ({', '.join(r['files_left'][:5])})" if r["files_left"] else ""))
    p(f"  log {r['log']}: {len(r['log_problems'])} WARN/ERROR lines")
    for line in r["log_problems"][:20]:
        p(f"    {line}")
    if r.get("error"):
        p(f"RUN FAILED: {r['error']}")
    return "\n".join(out)


# ---- main ----------------------------------------------------------------------------------

def in_private_netns():
    names = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
    return names == ["lo"]


def stop_quietly(ioc):
    """Stop acquiring and capturing after a run failed, ignoring any further error."""
    try:
        ioc.put_nowait("cam1:Acquire", 0)
        ioc.put_nowait("HDF1:Capture", 0)
        time.sleep(2)
    except Exception:
        pass


def prepare_scratch(args):
    """Empty args.scratch, make its data/ folder and copy the binary there (so that a
    rebuild of target/release during the run cannot swap it). Returns (data dir, binary copy,
    when the binary was built, the tree's git description)."""
    if args.scratch.exists():
        shutil.rmtree(args.scratch)
    data_dir = args.scratch / "data"
    data_dir.mkdir(parents=True)
    binary = args.scratch / "detflow"
    shutil.copy2(args.binary, binary)
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(args.binary.stat().st_mtime))
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return data_dir, binary, built, commit


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, default=REPO / "target/release/detflow")
    ap.add_argument("--scratch", type=Path, default=REPO / "target/tmp/serve-figures",
                    help="log, probe data and (under data/) the files written")
    ap.add_argument("--phases", default="idle,acquire,write",
                    help="which phases, in this order (default: %(default)s)")
    ap.add_argument("--idle-minutes", type=float, default=10)
    ap.add_argument("--acquire-minutes", type=float, default=10)
    ap.add_argument("--write-seconds", type=float, default=60,
                    help="the write phase under the latency client")
    ap.add_argument("--probe-seconds", type=float, default=20,
                    help="each codec's rate probe before the write phase")
    ap.add_argument("--codecs", default="none,bslz4", help="codecs the rate probe tries")
    ap.add_argument("--settle-seconds", type=float, default=3)
    ap.add_argument("--file-gb", type=float, default=4,
                    help="write-phase files hold about this much (each is deleted once "
                         "closed, which bounds the disk in use)")
    ap.add_argument("--frames-per-file", type=int, default=0,
                    help="NumCapture of each write-phase file (0: from --file-gb)")
    ap.add_argument("--cycle-frames", type=int, default=200)
    ap.add_argument("--cycle-codec", default="bslz4", choices=sorted(COMPRESSIONS))
    ap.add_argument("--get-hz", type=float, default=200, help="latency client's gets/s")
    ap.add_argument("--idle-poll-hz", type=float, default=20,
                    help="gets/s of the client polling in the idle phase")
    ap.add_argument("--cycle-poll-hz", type=float, default=50,
                    help="gets/s of the client polling in the acquiring phase")
    ap.add_argument("--fresh-connects", type=int, default=8)
    ap.add_argument("--sample-seconds", type=float, default=10)
    ap.add_argument("--min-free-gb", type=float, default=10)
    ap.add_argument("--size", help="frame size WxH passed to serve (default: its own)")
    ap.add_argument("--json", type=Path, help="also write every figure as JSON here")
    ap.add_argument("--allow-host-network", action="store_true",
                    help="run even when not in a private network namespace")
    args = ap.parse_args()
    args.codecs = [c for c in args.codecs.split(",") if c]
    phases = [p for p in args.phases.split(",") if p]
    if not args.allow_host_network and not in_private_netns():
        sys.exit("not in a private network namespace; run as\n  unshare -n sh -c 'ip link set "
                 "lo up && exec PYTHON benches/serve_figures.py ...'")
    if not args.binary.exists():
        sys.exit(f"{args.binary} missing: cargo build --release")
    data_dir, binary, built, commit = prepare_scratch(args)

    import epics
    daemon = Daemon(binary, args.scratch, args)
    sampler = Sampler(daemon, args.scratch, args.sample_seconds, args.min_free_gb * 1e9)
    result = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "host": os.uname().nodename,
              "cpus": os.cpu_count(), "pid": daemon.pid, "daemon_cmd": daemon.cmd,
              "binary": f"{args.binary} built {built}, tree {commit}",
              "pyepics": epics.__version__, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                     for k, v in vars(args).items()},
              "uptime": subprocess.run(["uptime"], capture_output=True,
                                       text=True).stdout.strip()}
    ioc = Ioc(epics)
    try:
        wait_until_served(ioc, daemon)
        sampler.start()
        w, h = int(ioc.get("cam1:ArraySizeX_RBV")), int(ioc.get("cam1:ArraySizeY_RBV"))
        result["frame"] = f"{w}x{h} {ioc.get('cam1:DataType_RBV', as_string=True)}"
        for phase in phases:
            print(f"[{time.strftime('%H:%M:%S')}] phase {phase}", file=sys.stderr, flush=True)
            if phase == "idle":
                idle_phase(args, ioc, sampler, args.scratch, result)
            elif phase == "acquire":
                acquire_phase(args, ioc, sampler, args.scratch, data_dir, result)
            elif phase == "write":
                write_phase(args, ioc, sampler, args.scratch, data_dir, result)
            else:
                raise SystemExit(f"unknown phase {phase!r}")
    except Exception as e:  # report what was measured, and why it stopped
        result["error"] = f"{type(e).__name__}: {e}"
        stop_quietly(ioc)
    finally:
        sampler.halt.set()
        sampler.phase = "end"
        last = sampler.sample()
        result["final"] = last or {"rss_kib": 0, "hwm_kib": 0, "threads": 0, "fds": 0}
        for pv in ioc.pvs.values():
            pv.disconnect()
        t0 = time.monotonic()
        result["exit_status"] = daemon.stop()
        result["stop_s"] = time.monotonic() - t0
        binary.unlink(missing_ok=True)
        result["log"] = str(daemon.log_path)
        result["log_problems"] = daemon.log_lines()
        free = sampler.min_free_seen or shutil.disk_usage(args.scratch).free
        result["min_free_gb"] = free / 1e9
        if DELETER:
            DELETER.queue.join()
        left = list(data_dir.rglob("*"))
        result["files_left"] = [str(p) for p in left]
        shutil.rmtree(data_dir, ignore_errors=True)
    result["samples"] = sampler.samples
    text = report(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0 if not result.get("error") and result["exit_status"] == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_probe":
        probe_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_fresh":
        fresh_main(sys.argv[2:])
    else:
        sys.exit(main())
