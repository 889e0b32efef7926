"""A soak of `detflow serve`: N minutes of continuous writing, with readers attached.

The script starts the daemon (release build, 1024x1024 u16 frames, `--data-root SCRATCH`),
finds the highest BSLZ4 rate it sustains here (period 0, as benches/serve_figures.py does),
then acquires continuously at --fraction (default 80%) of that rate for --minutes (default
30) while

- a SWMR h5py reader (its own process) follows the file being written: every 1/--reader-hz
  s it refreshes the dataset, reads the newest frame, and notes how far it is behind the
  frames the IOC says are written (HDF1:NumCaptured_RBV, read right after);
- a pyepics client (its own process) does caget on open channels at --get-hz (default 50,
  `use_monitor=False`), reading four PVs in turn, and times each round trip;
- this process samples the daemon's RSS, threads and open fds (/proc/PID/status, fd).

How the files are written is what an operator who streams for hours would run: ONE capture
(FileWriteMode Stream, NumCapture 0, Capture = 1 before Acquire = 1) and the daemon itself
starting a new file every --frames-per-file frames (`[writer] frames_per_file` in the
daemon's --config). No frame falls between two files, unlike re-arming Capture after a
NumCapture-sized capture, and the file size stays bounded. The reader deletes each file once
it has moved past it (after counting its frames), so the disk in use stays at a few files.

At the end: Acquire = 0, Capture = 0, SIGTERM; the report gives frames acquired, written and
dropped, RSS and fds at start and end, caget p50/p99/max, reader lag (frames and seconds)
and the daemon's exit status. `--json FILE` writes every figure.

    benches/soak.sh --minutes 2 --json soak.json      # cargo build --release, then this

Run directly, the script re-runs itself under the venv target/tmp/ca-interop-venv (made if
missing, with pyepics, h5py, hdf5plugin and numpy added if they are not there) and inside a
private network namespace (`unshare -n`, lo up), so Channel Access stays on loopback.
"""
import argparse
import json
import os
import re
import subprocess
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "target/tmp/ca-interop-venv"
# The versions the interop tests pin (ca-server/tests/interop_clients.rs, tests/serve_clients.rs).
PACKAGES = ["pyepics==3.5.10", "h5py==3.16.0", "hdf5plugin==7.1.0", "numpy<3"]
MODULES = ["epics", "h5py", "hdf5plugin", "numpy"]
BOOTSTRAPPED = "DETFLOW_SOAK_BOOTSTRAPPED"
SIZE = "1024x1024"
DTYPE = "u16"
DATASET = "/entry/instrument/detector/data"


# ---- getting into the venv and the network namespace (standard library only) --------------

def fail(msg):
    sys.exit(f"soak: {msg}")


def run_or_fail(cmd, what):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"{what} failed ({out.returncode}): {' '.join(map(str, cmd))}\n"
             f"{out.stdout[-2000:]}{out.stderr[-2000:]}")


def venv_python():
    """The venv's interpreter, with every module of MODULES importable: the venv is made
    (in a private folder, renamed into place, as test-support does) when missing, and the
    packages pip-installed into it when they are not there. Fails loudly otherwise."""
    py = VENV / "bin" / "python"
    if not py.exists():
        tmp = VENV.with_name(f"{VENV.name}.tmp{os.getpid()}")
        run_or_fail([sys.executable, "-m", "venv", str(tmp)],
                    f"making the venv {tmp} (needs python3 with venv)")
        VENV.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(VENV)
        except OSError:  # made meanwhile by `cargo test`: use that one
            subprocess.run(["rm", "-rf", str(tmp)])
    check = [str(py), "-c", "import " + ", ".join(MODULES)]
    if subprocess.run(check, capture_output=True).returncode != 0:
        print(f"soak: pip install {' '.join(PACKAGES)} into {VENV}", file=sys.stderr)
        run_or_fail([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                     *PACKAGES], f"pip install into {VENV}")
        run_or_fail(check, f"importing {', '.join(MODULES)} in {VENV}")
    return py


def in_private_netns():
    names = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
    return names == ["lo"]


def bootstrap(argv):
    """Re-run this script under the venv's python inside `unshare -n`, unless already there
    (or --allow-host-network)."""
    in_venv = Path(sys.prefix).resolve() == VENV.resolve()
    netns_ok = in_private_netns() or "--allow-host-network" in argv
    if in_venv and netns_ok:
        return
    if os.environ.get(BOOTSTRAPPED):
        fail(f"re-run under {VENV} inside `unshare -n` and still not there (python prefix "
             f"{sys.prefix}, private network namespace: {in_private_netns()})")
    py = venv_python()
    env = dict(os.environ, **{BOOTSTRAPPED: "1"})
    cmd = [str(py), str(Path(__file__).resolve()), *argv]
    if not netns_ok:
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    os.execvpe(cmd[0], cmd, env)


# ---- the SWMR reader (a process of its own) -------------------------------------------------

def file_number(name):
    m = re.search(r"_(\d+)\.h5$", str(name))
    return int(m.group(1)) if m else None


def reader_main(argv):
    """Child process: follow the file HDF1:FullFileName_RBV names, at HZ, until the file STOP
    exists. Each tick: account (count, then delete) every file numbered below the current
    one, which the daemon has closed; refresh the current dataset and read its newest frame;
    then caget HDF1:NumCaptured_RBV. Writes {"samples": [[t, seen, written, read_ms], ...],
    "files": [[name, frames], ...], ...} to OUT."""
    out, stop, data_dir, hz = Path(argv[0]), Path(argv[1]), Path(argv[2]), float(argv[3])
    import queue
    import threading

    from serve_figures import PREFIX  # first: it sets the CA environment libca reads

    import epics
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bitshuffle filter)

    full = epics.PV(PREFIX + "HDF1:FullFileName_RBV", auto_monitor=True)
    captured = epics.PV(PREFIX + "HDF1:NumCaptured_RBV", auto_monitor=False)
    for pv in (full, captured):
        if not pv.wait_for_connection(timeout=10):
            sys.exit(f"reader: {pv.pvname} did not connect")
    captured.get(use_monitor=False, timeout=5)  # control info, outside the timed loop

    # Unlinking a large file takes a while: off the reading loop.
    doomed = queue.Queue()
    delete_errors = []

    def deleter():
        while True:
            p = doomed.get()
            try:
                os.remove(p)
            except OSError as e:
                delete_errors.append(f"{p}: {e}")
            doomed.task_done()

    threading.Thread(target=deleter, daemon=True).start()

    closed_frames = 0
    accounted = set()
    files = []
    f = ds = None
    open_name = None
    samples = []
    open_retries = 0
    read_errors = []
    empty_frames = 0
    period = 1.0 / hz
    next_t = time.monotonic()
    while not stop.exists():
        now = time.monotonic()
        if now < next_t:
            time.sleep(next_t - now)
        next_t += period
        if next_t < time.monotonic() - 1.0:  # a long stall: don't burst to catch up
            next_t = time.monotonic()
        name = full.get(as_string=True)
        current = file_number(name)
        if current is None:
            continue
        for p in sorted(data_dir.glob("*.h5"), key=file_number):
            k = file_number(p)
            if k is None or k >= current or p.name in accounted:
                continue
            if open_name == str(p):
                f.close()
                f = ds = open_name = None
            try:
                with h5py.File(p, "r") as g:
                    n = int(g[DATASET].shape[0])
            except (OSError, KeyError) as e:
                read_errors.append(f"closed file {p.name}: {e}")
                n = 0
            accounted.add(p.name)
            closed_frames += n
            files.append([p.name, n])
            doomed.put(p)
        if open_name != name:
            try:
                g = h5py.File(name, "r", swmr=True)
                if f is not None:
                    f.close()
                f, ds, open_name = g, g[DATASET], name
            except (OSError, KeyError):
                open_retries += 1  # created, not yet in SWMR mode: next tick
        seen = closed_frames
        read_ms = None
        if ds is not None:
            t0 = time.perf_counter()
            try:
                ds.refresh()
                n = int(ds.shape[0])
                if n:
                    frame = ds[n - 1]
                    if not frame.any():
                        empty_frames += 1
                seen += n
            except Exception as e:  # noted, and the next tick tries again
                read_errors.append(f"{Path(open_name).name}: {type(e).__name__}: {e}")
            read_ms = (time.perf_counter() - t0) * 1000
        written = captured.get(use_monitor=False, timeout=5)
        samples.append([time.time(), seen, -1 if written is None else int(written), read_ms])
    if f is not None:
        f.close()
    doomed.join()
    out.write_text(json.dumps({
        "samples": samples, "files": files, "open_retries": open_retries,
        "read_errors": read_errors, "empty_frames": empty_frames,
        "delete_errors": delete_errors}))


# ---- the soak -------------------------------------------------------------------------------

def daemon_config(path, frames_per_file):
    path.write_text(f'[detector]\nsize = "{SIZE}"\ndtype = "{DTYPE}"\n\n'
                    f"[writer]\nframes_per_file = {frames_per_file}\n")


def frames_in(path):
    import h5py
    import hdf5plugin  # noqa: F401
    with h5py.File(path, "r") as g:
        return int(g[DATASET].shape[0])


def proc_figures(daemon):
    """RSS, threads and open fds of the daemon, with what each fd is (a file, socket:[inode],
    anon_inode:[eventfd] ...), so that fds left over at the end can be named."""
    s = daemon.status()
    targets = []
    fd_dir = Path(f"/proc/{daemon.pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            pass
    return {"t": time.time(), "rss_kib": s["rss_kib"], "hwm_kib": s["hwm_kib"],
            "fds": s["fds"], "threads": s["threads"], "fd_targets": sorted(targets)}


def settled_figures(daemon, start_fds, quiet_s=3.0, timeout_s=20.0):
    """proc_figures once the daemon has closed the circuits of clients that just left: when
    its fds are back to `start_fds`, or have not changed for `quiet_s` (then what is left is
    reported as left), at most `timeout_s`."""
    t0 = time.monotonic()
    last = proc_figures(daemon)
    changed = t0
    while True:
        now = time.monotonic()
        if last["fds"] <= start_fds or now - changed >= quiet_s or now - t0 >= timeout_s:
            last["settle_s"] = now - t0
            return last
        time.sleep(0.2)
        cur = proc_figures(daemon)
        if cur["fd_targets"] != last["fd_targets"]:
            changed = time.monotonic()
        last = cur


def fd_kinds(targets):
    """socket:[123] -> socket, /path/file.h5 -> file, anon_inode:[eventfd] -> as is."""
    kinds = {}
    for t in targets:
        k = ("socket" if t.startswith("socket:") else "pipe" if t.startswith("pipe:")
             else t if t.startswith("anon_inode:") else "file")
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


def percentile(a, q):
    import numpy as np
    return float(np.percentile(a, q)) if len(a) else None


def lag_stats(reader, fps):
    """Reader lag: frames written (NumCaptured_RBV read right after the reader's look) minus
    frames the reader saw; in seconds at the acquisition rate `fps`."""
    import numpy as np
    ok = [s for s in reader["samples"] if s[2] >= 0]
    lag = np.array([s[2] - s[1] for s in ok], dtype=float)
    reads = np.array([s[3] for s in ok if s[3] is not None], dtype=float)
    if not lag.size:
        return {"n": 0}
    return {
        "n": int(lag.size),
        "median_frames": float(np.median(lag)), "p99_frames": percentile(lag, 99),
        "max_frames": float(lag.max()), "min_frames": float(lag.min()),
        "median_s": float(np.median(lag)) / fps, "p99_s": percentile(lag, 99) / fps,
        "max_s": float(lag.max()) / fps,
        "read_ms_median": percentile(reads, 50), "read_ms_max": float(reads.max())
        if reads.size else None,
        "caget_timeouts": len(reader["samples"]) - len(ok),
    }


def soak(args, sf, ioc, sampler, daemon, data_dir, period, result):
    """One capture, acquiring continuously at `period` for --minutes, readers attached."""
    sf.configure(ioc, data_dir, "bslz4", image_mode=2, num_images=1, num_capture=0)
    ioc.put("cam1:AcquirePeriod", period, check=False)
    period_rbv = float(ioc.get("cam1:AcquirePeriod_RBV"))
    if abs(period_rbv - period) > 1e-6:
        raise RuntimeError(f"cam1:AcquirePeriod_RBV reads {period_rbv} after caput {period}")
    before = sf.counters(ioc)
    run = {"period_s": period_rbv, "target_fps": 1.0 / period_rbv, "stopped_by": "time",
           "timeline": [], "frames_per_file": args.frames_per_file}
    result["soak"] = run
    sampler.phase = "soak"
    sf.arm(ioc, {})
    first_file = ioc.get("HDF1:FullFileName_RBV", as_string=True)
    run["first_file"] = first_file
    run["proc"] = {"start": proc_figures(daemon)}  # file open, not yet acquiring
    reader_out, reader_stop = args.scratch / "reader.json", args.scratch / "reader.stop"
    reader = subprocess.Popen([sys.executable, __file__, "_reader", str(reader_out),
                               str(reader_stop), str(data_dir), str(args.reader_hz)],
                              env=dict(os.environ, **sf.CA_ENV))
    sampler.client_pids.add(reader.pid)
    load0 = os.getloadavg()
    meter = sf.CpuMeter(daemon)
    capture_rbv = ioc.pv("HDF1:Capture_RBV")  # monitored: a capture that ends is seen at once
    t0 = time.monotonic()
    ioc.put_nowait("cam1:Acquire", 1)
    ioc.wait_for("cam1:Acquire_RBV", 1, 10)
    seconds = args.minutes * 60
    probe = sf.start_probe(sampler, args.scratch, "soak", seconds + 120, args.get_hz)
    next_tick = t0 + 1.0
    marks = {60: "after_1_min"}
    try:
        while time.monotonic() - t0 < seconds:
            time.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick += 1.0
            if not daemon.alive():
                raise RuntimeError(f"the daemon exited during the soak "
                                   f"({daemon.proc.returncode})")
            if reader.poll() is not None:
                raise RuntimeError(f"the SWMR reader exited ({reader.returncode})")
            if probe[0].poll() is not None:
                raise RuntimeError(f"the caget client exited ({probe[0].returncode})")
            if sampler.disk_low.is_set():
                run["stopped_by"] = "disk guard"
                break
            if capture_rbv.get() == 0 and ioc.get("HDF1:Capture_RBV") == 0:
                run["stopped_by"] = ("the capture ended: "
                                     + ioc.get("HDF1:WriteMessage", as_string=True))
                break
            if not run["timeline"] or time.time() - run["timeline"][-1][0] >= 5:
                c = sf.counters(ioc)
                run["timeline"].append([time.time(), c["array_counter"], c["dropped_arrays"],
                                        c["dropped_frames"],
                                        int(ioc.get("HDF1:NumCaptured_RBV"))])
            elapsed = time.monotonic() - t0
            for at, key in list(marks.items()):
                if elapsed >= at and seconds > at + 30:
                    run["proc"][key] = proc_figures(daemon)
                    del marks[at]
        run["proc"]["end"] = proc_figures(daemon)  # still acquiring
    finally:
        # Stop the clients first, so that their figures cover the acquisition only.
        reader_stop.touch()
        caget = sf.finish_probe(probe, 30)
        try:
            reader.wait(60)
        except subprocess.TimeoutExpired:
            reader.kill()
            reader.wait()
        ioc.put_nowait("cam1:Acquire", 0)
        ioc.wait_for("cam1:AcquireBusy", 0, 60)
        run["seconds"] = time.monotonic() - t0
        ioc.put_nowait("HDF1:Capture", 0)
        ioc.wait_for("HDF1:Capture_RBV", 0, 60)
    if reader.returncode != 0:
        raise RuntimeError(f"the SWMR reader exited {reader.returncode}")
    followed = json.loads(reader_out.read_text())
    run.update(meter.result())
    run["load"] = [load0, os.getloadavg()]
    after = sf.counters(ioc)
    written = int(ioc.get("HDF1:NumCaptured_RBV"))
    left = sorted(data_dir.glob("*.h5"), key=file_number)
    in_left = []
    for p in left:
        in_left.append([p.name, frames_in(p)])
        p.unlink()
    files = followed["files"] + in_left
    acquired = after["array_counter"] - before["array_counter"]
    run.update({
        "frames_acquired": acquired,
        "frames_written": written,
        "frames_in_files": sum(n for _, n in files),
        "files": len(files),
        "short_files": [f for f in files[:-1] if f[1] != args.frames_per_file],
        "not_written": acquired - written,
        "dropped_arrays": [before["dropped_arrays"], after["dropped_arrays"]],
        "dropped_frames": [before["dropped_frames"], after["dropped_frames"]],
        "write_status": int(ioc.get("HDF1:WriteStatus")),
        "write_message": ioc.get("HDF1:WriteMessage", as_string=True),
        "acquired_fps": acquired / run["seconds"],
    })
    # The run is over and every file closed; the clients' circuits close as the daemon
    # notices they left.
    run["proc"]["after_stop"] = settled_figures(daemon, run["proc"]["start"]["fds"])
    run["caget"] = sf.probe_stats(caget, sampler)
    run["caget_hz"] = args.get_hz
    run["reader"] = {"hz": args.reader_hz, "lag": lag_stats(followed, run["acquired_fps"]),
                     "open_retries": followed["open_retries"],
                     "read_errors": followed["read_errors"][:20],
                     "read_error_count": len(followed["read_errors"]),
                     "empty_frames": followed["empty_frames"],
                     "delete_errors": followed["delete_errors"]}
    run["rss"] = sf.rss_phase(sampler, "soak")
    run["minutes"] = minute_table(run, followed, sampler, caget)
    sampler.phase = "end"


def minute_table(run, followed, sampler, caget):
    """Minute by minute: acquisition rate, frames dropped, caget p99 and max, the reader's
    largest lag, the daemon's RSS and fds, and who used the CPUs."""
    import numpy as np
    tl = run["timeline"]
    if len(tl) < 2:
        return []
    t0 = tl[0][0]
    rows = []
    m = 0
    while True:
        a, b = t0 + 60 * m, t0 + 60 * (m + 1)
        w = [x for x in tl if a <= x[0] <= b]
        if len(w) < 2:
            break
        dt = w[-1][0] - w[0][0]
        gets = [x[2] * 1000 for x in caget if a <= x[0] < b and x[2] >= 0]
        lags = [x[2] - x[1] for x in followed["samples"] if a <= x[0] < b and x[2] >= 0]
        with sampler.lock:
            rss = [x for x in sampler.samples if x["phase"] == "soak"
                   and a <= time.time() - (time.monotonic() - x["t"]) < b]
        rows.append({
            "minute": m,
            "fps": (w[-1][1] - w[0][1]) / dt,
            "written_fps": (w[-1][4] - w[0][4]) / dt,
            "dropped": w[-1][2] - w[0][2],
            "caget_p99_ms": float(np.percentile(gets, 99)) if gets else None,
            "caget_max_ms": max(gets) if gets else None,
            "lag_max_frames": max(lags) if lags else None,
            "rss_mib": rss[-1]["rss_kib"] / 1024 if rss else None,
            "fds": rss[-1]["fds"] if rss else None,
            "cpu": sampler.cpu_between(a, b),
        })
        m += 1
    return rows


def fmt_minute(x):
    f = lambda v, spec: "-" if v is None else format(v, spec)
    c = x["cpu"]
    cpu = f"{c['daemon']:4.0f} {c['other']:4.0f}" if c else "   -    -"
    return (f"  {x['minute']:4d} {x['fps']:7.1f} {x['written_fps']:7.1f} {x['dropped']:6d} "
            f"{f(x['caget_p99_ms'], '7.2f')} {f(x['caget_max_ms'], '7.1f')} "
            f"{f(x['lag_max_frames'], '6.0f')} {f(x['rss_mib'], '7.1f')} {f(x['fds'], '4d')} "
            f"{cpu}")


# ---- the report -----------------------------------------------------------------------------

def report(r):
    out = []
    p = out.append
    p(f"detflow serve soak (benches/soak.py): {r['args']['minutes']} min at "
      f"{r['args']['fraction'] * 100:.0f}% of the highest sustained BSLZ4 rate")
    p(f"  when {r['when']}; host {r['host']}; {r['cpus']} CPUs; {r['uptime']}")
    p(f"  daemon: {' '.join(r['daemon_cmd'])} (pid {r['pid']}); frame {r.get('frame', '?')}")
    p(f"  binary: {r['binary']}; pyepics {r['pyepics']}, h5py {r['h5py']}")
    if "probe" in r:
        t = r["probe"]
        p(f"  rate probe (period 0, {t['seconds']:.0f} s, Stream captures of "
          f"{r['args']['frames_per_file']} frames): {t['fps_written']:.0f} frames/s written, "
          f"{t['bytes_on_disk'] / max(1, t['frames_written']) / 1e6:.2f} MB/frame on disk, "
          f"DroppedArrays {t['dropped_arrays'][0]}->{t['dropped_arrays'][1]}; "
          f"{sf_fmt_cpu(t)}")
    if "max_fps" in r:
        p(f"  highest sustained rate {r['max_fps']:.0f} frames/s ({r['max_fps_from']}) -> "
          f"target {r['args']['fraction'] * r['max_fps']:.0f} frames/s")
    s = r.get("soak")
    if s and "frames_acquired" in s:
        p(f"  soak: Continuous, BSLZ4, AcquirePeriod {s['period_s'] * 1000:.3f} ms "
          f"({s['target_fps']:.0f} frames/s); one capture (Stream, NumCapture 0), a new file "
          f"every {s['frames_per_file']} frames; {s['seconds'] / 60:.1f} min, stopped by "
          f"{s['stopped_by']}")
        p(f"    {sf_fmt_cpu(s)}")
        p("")
        da, df = s["dropped_arrays"], s["dropped_frames"]
        rows = [
            ("frames acquired (cam1:ArrayCounter_RBV)", s["frames_acquired"]),
            ("frames written (HDF1:NumCaptured_RBV)", s["frames_written"]),
            (f"frames found in the {s['files']} files", s["frames_in_files"]),
            ("acquired but not written", s["not_written"]),
            ("dropped (HDF1:DroppedArrays_RBV)", da[1] - da[0]),
            ("dropped by the detector (cam1:DroppedFrames_RBV)", df[1] - df[0]),
        ]
        for what, v in rows:
            p(f"  {what:52s} {v:>10}")
        p(f"  {'acquisition rate, frames/s':52s} {s['acquired_fps']:>10.1f}")
        if s["short_files"]:
            p(f"  files with other than {s['frames_per_file']} frames: {s['short_files'][:5]}")
        p(f"  WriteStatus {s['write_status']}, WriteMessage {s['write_message']!r}")
        p("")
        pr = s["proc"]
        cols = [k for k in ("start", "after_1_min", "end", "after_stop") if k in pr]
        heads = {"start": "start", "after_1_min": "after 1 min", "end": "end",
                 "after_stop": "after stop"}
        p(f"  {'daemon':22s}" + "".join(f"{heads[c]:>14s}" for c in cols))
        p(f"  {'RSS (MiB)':22s}" + "".join(f"{pr[c]['rss_kib'] / 1024:>14.1f}" for c in cols))
        p(f"  {'open fds':22s}" + "".join(f"{pr[c]['fds']:>14d}" for c in cols))
        p(f"  {'threads':22s}" + "".join(f"{pr[c]['threads']:>14d}" for c in cols))
        p("    (start: file open, not yet acquiring; end: still acquiring; after stop: "
          "Acquire 0, Capture 0, files closed, the clients gone "
          f"{pr['after_stop'].get('settle_s', 0):.1f} s)")
        for c in cols:
            p(f"    fds at {heads[c]}: " + ", ".join(
                f"{k} {n}" for k, n in sorted(fd_kinds(pr[c]["fd_targets"]).items())))
        if s.get("rss") and s["rss"]["all"]:
            a = s["rss"]["all"]
            line = (f"  RSS every {r['args']['sample_seconds']:.0f} s: min "
                    f"{a['min_kib'] / 1024:.1f}, max {a['max_kib'] / 1024:.1f} MiB, slope "
                    f"{a['slope_kib_per_min']:+.1f} KiB/min")
            b = s["rss"]["after_first_minute"]
            if b:
                line += f"; after the first minute {b['slope_kib_per_min']:+.1f} KiB/min"
            p(line)
        p("")
        c = s["caget"]["all"]
        if c.get("n"):
            p(f"  caget ({s['caget_hz']:.0f}/s, use_monitor=False, open channels): n={c['n']}, "
              f"p50 {c['median_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms, max {c['max_ms']:.1f} "
              f"ms, >50 ms {c['over_50ms']}, timeouts {s['caget']['timeouts']}")
        else:
            p(f"  caget: no samples, timeouts {s['caget']['timeouts']}")
        if s.get("minutes"):
            p("")
            p("  minute by minute: frames acquired and written per second, frames dropped "
              "(DroppedArrays),")
            p("  caget p99 and max (ms), the reader's largest lag (frames), the daemon's RSS "
              "and fds,")
            p("  CPU in % of one CPU of the daemon (dmn) and of other processes (oth)")
            p(f"  {'min':>4} {'acq/s':>7} {'wrt/s':>7} {'drop':>6} {'get p99':>7} "
              f"{'get max':>7} {'lag':>6} {'RSS MiB':>7} {'fds':>4} {'dmn':>4} {'oth':>4}")
            out.extend(fmt_minute(x) for x in s["minutes"])
            p("")
        rd = s["reader"]
        lag = rd["lag"]
        if lag.get("n"):
            p(f"  SWMR reader ({rd['hz']:.0f}/s, newest frame each time): lag behind "
              f"NumCaptured_RBV median {lag['median_frames']:.0f} frames "
              f"({lag['median_s']:.2f} s), p99 {lag['p99_frames']:.0f} "
              f"({lag['p99_s']:.2f} s), max {lag['max_frames']:.0f} frames "
              f"({lag['max_s']:.2f} s); n={lag['n']}")
            p(f"    read (refresh + newest frame) median {lag['read_ms_median']:.1f} ms, max "
              f"{lag['read_ms_max']:.1f} ms; file opens retried {rd['open_retries']}, read "
              f"errors {rd['read_error_count']}, all-zero frames {rd['empty_frames']}, "
              f"delete errors {len(rd['delete_errors'])}")
            for e in rd["read_errors"][:5]:
                p(f"      {e}")
        else:
            p("  SWMR reader: no samples")
    p("")
    p(f"  daemon: SIGTERM -> exit status {r.get('exit_status')} "
      f"({'ok' if r.get('exit_status') == 0 else 'NOT 0'}) in {r.get('stop_s', 0):.2f} s; "
      f"log {r.get('log')}: {len(r.get('log_problems', []))} WARN/ERROR lines")
    for line in r.get("log_problems", [])[:10]:
        p(f"    {line}")
    if r.get("error"):
        p(f"SOAK FAILED: {r['error']}")
    return "\n".join(out)


def sf_fmt_cpu(t):
    return (f"CPU % of one CPU: daemon {t['daemon_cpu_pct']:.0f}, clients "
            f"{t['client_cpu_pct']:.0f}, others {t['other_cpu_pct']:.0f}")


# ---- main -----------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30, help="soak length (default 30)")
    ap.add_argument("--fraction", type=float, default=0.8,
                    help="of the highest sustained rate (default 0.8)")
    ap.add_argument("--rate", type=float,
                    help="the highest sustained rate in frames/s, if known: skips the probe")
    ap.add_argument("--probe-seconds", type=float, default=30)
    ap.add_argument("--frames-per-file", type=int, default=1000,
                    help="the daemon starts a new file every N frames (default 1000)")
    ap.add_argument("--get-hz", type=float, default=50, help="caget client's gets/s")
    ap.add_argument("--reader-hz", type=float, default=20, help="SWMR reader's looks/s")
    ap.add_argument("--sample-seconds", type=float, default=10, help="RSS sampling")
    ap.add_argument("--min-free-gb", type=float, default=10,
                    help="stop early when free disk under the scratch falls below this")
    ap.add_argument("--binary", type=Path, default=REPO / "target/release/detflow")
    ap.add_argument("--scratch", type=Path, default=REPO / "target/tmp/soak")
    ap.add_argument("--json", type=Path, help="also write every figure as JSON here")
    ap.add_argument("--allow-host-network", action="store_true",
                    help="run even when not in a private network namespace")
    args = ap.parse_args()
    if not args.binary.exists():
        fail(f"{args.binary} missing: cargo build --release")
    if args.json:
        args.json = args.json.resolve()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import serve_figures as sf  # first: it sets the CA environment libca reads

    import epics
    import h5py

    data_dir, binary, built, commit = sf.prepare_scratch(args)
    config = args.scratch / "serve.toml"
    daemon_config(config, args.frames_per_file)
    args.size = SIZE  # serve_figures.Daemon passes --size
    daemon = sf.Daemon(binary, args.scratch, args, extra=["--config", str(config)])
    sampler = sf.Sampler(daemon, args.scratch, args.sample_seconds, args.min_free_gb * 1e9)
    result = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "host": os.uname().nodename,
              "cpus": os.cpu_count(), "pid": daemon.pid, "daemon_cmd": daemon.cmd,
              "binary": f"{args.binary} built {built}, tree {commit}",
              "pyepics": epics.__version__, "h5py": h5py.__version__,
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "uptime": subprocess.run(["uptime"], capture_output=True,
                                       text=True).stdout.strip()}
    ioc = sf.Ioc(epics)
    try:
        sf.wait_until_served(ioc, daemon)
        sampler.start()
        result["daemon_start"] = proc_figures(daemon)
        w, h = int(ioc.get("cam1:ArraySizeX_RBV")), int(ioc.get("cam1:ArraySizeY_RBV"))
        result["frame"] = f"{w}x{h} {ioc.get('cam1:DataType_RBV', as_string=True)}"
        if args.rate:
            result["max_fps"], result["max_fps_from"] = args.rate, "--rate"
        else:
            print(f"[{time.strftime('%H:%M:%S')}] rate probe, {args.probe_seconds:.0f} s",
                  file=sys.stderr, flush=True)
            sampler.phase = "probe"
            t = sf.continuous_write(ioc, sampler, data_dir, "bslz4", args.probe_seconds,
                                    args.frames_per_file)
            sf.summarize_times(t)
            t.pop("array_rate")
            result["probe"] = t
            result["max_fps"], result["max_fps_from"] = t["fps_written"], "the rate probe"
        for p in data_dir.iterdir():  # the probe's files are deleted; anything else is not ours
            raise RuntimeError(f"{p} left in {data_dir} before the soak")
        period = 1.0 / (args.fraction * result["max_fps"])
        print(f"[{time.strftime('%H:%M:%S')}] soak, {args.minutes} min at "
              f"{1 / period:.0f} frames/s", file=sys.stderr, flush=True)
        soak(args, sf, ioc, sampler, daemon, data_dir, period, result)
    except Exception as e:  # report what was measured, and why it stopped
        result["error"] = f"{type(e).__name__}: {e}"
        sf.stop_quietly(ioc)
    finally:
        sampler.halt.set()
        for pv in ioc.pvs.values():
            pv.disconnect()
        t0 = time.monotonic()
        result["exit_status"] = daemon.stop()
        result["stop_s"] = time.monotonic() - t0
        binary.unlink(missing_ok=True)
        result["log"] = str(daemon.log_path)
        result["log_problems"] = daemon.log_lines()
        shutil.rmtree(data_dir, ignore_errors=True)
    result["samples"] = sampler.samples
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    s = result.get("soak", {})
    ok = (not result.get("error") and result["exit_status"] == 0
          and s.get("frames_in_files") == s.get("frames_written"))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_reader":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        reader_main(sys.argv[2:])
    else:
        bootstrap(sys.argv[1:])
        sys.exit(main())
