"""Interop checks of detflow-ca against real Channel Access clients.

Usage: python ca_clients.py SCENARIO SERVE_DEMO_BINARY
SCENARIO is one of: pyepics, caproto, ophyd.

Starts the demo server (port 0: the server picks a free port and prints it), points the
clients at it on 127.0.0.1 only, runs the checks, prints "CHECK <name>" per check,
"FIGURE <name> <value>" per measurement and "ALL OK" at the end. The server is stopped by
closing its stdin, then by PID. Any failed check raises: the exit status is non-zero.
"""
import os
import subprocess
import sys
import threading
import time

SCENARIO, SERVER = sys.argv[1], sys.argv[2]
DEADLINE = time.monotonic() + 150  # every wait below is bounded by this too


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    print("CHECK", name, flush=True)


def wait_for(name, fn, timeout=5.0):
    """Poll fn() until truthy (bounded)."""
    end = min(time.monotonic() + timeout, DEADLINE)
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"{name}: timed out, last value {last!r}")


server = subprocess.Popen([SERVER, "--port", "0"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
line = server.stdout.readline()
if not line.startswith("READY port="):
    server.kill()
    raise SystemExit(f"server did not start: {line!r}")
PORT = int(line.split("=")[1])


def hold_repeater_port():
    """Bind the clients' repeater port and keep it for the whole run, answering
    registrations as a repeater does (REPEATER_CONFIRM).

    Clients send REPEATER_REGISTER to 127.0.0.1:EPICS_CA_REPEATER_PORT, caproto's sync client
    from its search socket, a fresh ephemeral UDP socket per call. The port used to be the
    server's + 1, held by nobody: when a search socket's ephemeral port happened to be that
    port, the client registered with itself, and caproto failed with "Packet with bad command
    ID 0x18" (REPEATER_REGISTER) on its own search socket. A port bound here, without
    SO_REUSEADDR, is one the kernel never hands to another socket while we hold it.
    """
    import socket
    import struct
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))

    def serve():
        while True:
            try:
                data, peer = sock.recvfrom(2048)
            except OSError:
                return
            if len(data) >= 16 and struct.unpack(">H", data[:2])[0] == 0x18:
                # REPEATER_CONFIRM: command 17, param2 the client's address.
                ip = socket.inet_aton(peer[0])
                confirm = struct.pack(">HHHHI", 17, 0, 0, 0, 0) + ip
                try:
                    sock.sendto(confirm, peer)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return sock


REPEATER = hold_repeater_port()
os.environ.update({
    "EPICS_CA_ADDR_LIST": "127.0.0.1",
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_CA_SERVER_PORT": str(PORT),
    "EPICS_CA_REPEATER_PORT": str(REPEATER.getsockname()[1]),
})
print("server port", PORT, "repeater port", REPEATER.getsockname()[1], flush=True)

RAMP = None


def ramp():
    import numpy as np
    return (np.arange(1048576, dtype=np.uint32) % 65536).astype(np.uint16)


# ----------------------------------------------------------------------------------------
def run_pyepics():
    import numpy as np
    import epics
    print("pyepics", epics.__version__, "libca", epics.ca.find_libca(), flush=True)
    check("bundled libca", "site-packages/epics/clibs" in epics.ca.find_libca(),
          epics.ca.find_libca())
    g = lambda n, **kw: epics.caget(n, timeout=5, **kw)
    # caget on every type
    check("double", g("DET:AcquireTime") == 0.1)
    check("double as string uses PREC", g("DET:AcquireTime", as_string=True) == "0.100",
          g("DET:AcquireTime", as_string=True))
    check("float", abs(g("DET:Gain") - 1.5) < 1e-6)
    check("long", g("DET:NumImages") == 1)
    check("short", g("DET:BinX") == 1)
    check("enum index", g("DET:ImageMode") == 0)
    check("enum string", g("DET:ImageMode", as_string=True) == "Single")
    check("string", g("DET:Label") == "detflow")
    check("char waveform string", g("HDF1:FilePath", as_string=True) == "/data/")
    check("double waveform", list(g("DET:Waveform")) == [1.0, 2.5, -3.0], g("DET:Waveform"))
    check("char waveform bytes", list(g("DET:Bytes")) == [0, 1, 2, 255], g("DET:Bytes"))
    check("field .DISA", g("DET:AcquireTime_RBV.DISA") == 0)
    check("field .EGU", g("DET:AcquireTime.EGU") == "s")
    pv = epics.PV("DET:AcquireTime")
    pv.wait_for_connection(5)
    check("metadata", pv.precision == 3 and pv.units == "s" and pv.upper_ctrl_limit == 10.0,
          (pv.precision, pv.units, pv.upper_ctrl_limit))
    check("write access", pv.write_access)
    locked = epics.PV("DET:Locked")
    locked.wait_for_connection(5)
    check("read-only access", locked.read_access and not locked.write_access)

    # caput with and without wait, each type, readbacks follow
    cases = [("DET:AcquireTime", 0.25, 0.25), ("DET:Gain", 2.75, 2.75), ("DET:NumImages", 3, 3),
             ("DET:BinX", 2, 2), ("DET:ImageMode", 2, 2), ("DET:Label", "hello", "hello")]
    for name, value, want in cases:
        epics.caput(name, value, wait=True, timeout=5)
        check(f"caput wait {name}", g(name + "_RBV", use_monitor=False) == want)
    epics.caput("DET:NumImages", 4)  # no wait: a plain WRITE
    wait_for("caput nowait", lambda: g("DET:NumImages_RBV", use_monitor=False) == 4)
    check("caput nowait", True)
    epics.caput("DET:ImageMode", "Multiple", wait=True, timeout=5)
    check("enum put by string", g("DET:ImageMode_RBV", as_string=True, use_monitor=False) == "Multiple")
    epics.caput("DET:ImageMode", 0, wait=True, timeout=5)
    check("enum put by index", g("DET:ImageMode_RBV", as_string=True, use_monitor=False) == "Single")
    epics.caput("HDF1:FilePath", "/data/scan1/", wait=True, timeout=5)
    check("char waveform put", g("HDF1:FilePath_RBV", as_string=True, use_monitor=False) == "/data/scan1/")
    # The server's guarantee (ca-server/README.md, "Ordering"): the monitor update a put
    # causes is sent before the put's completion, so libca has delivered it by the time
    # caput(wait=True) returns. pyepics' get(use_monitor=False) then asks for the element
    # count of that update (NORD 2); without the guarantee it raced and read [4, 5, 0].
    wave = []
    wp = epics.PV("DET:Waveform", callback=lambda **kw: wave.append(list(kw["value"])))
    wait_for("waveform monitor connects", lambda: len(wave) >= 1)
    epics.caput("DET:Waveform", [4.0, 5.0], wait=True, timeout=5)
    check("put's monitor update before its completion", wave[-1] == [4.0, 5.0], wave)
    check("waveform put sets NORD", list(g("DET:Waveform", use_monitor=False)) == [4.0, 5.0],
          g("DET:Waveform", use_monitor=False))
    wp.clear_callbacks()
    # refused writes change nothing
    epics.caput("DET:AcquireTime", 20.0, wait=True, timeout=5)  # outside DRVH 10
    check("out of limits refused", g("DET:AcquireTime", use_monitor=False) == 0.25)
    # pyepics' caput(wait=True) returns 1 whatever the put-callback's status (it never reads
    # it): a refused put shows as the record's alarm, already there when caput returns.
    epics.caput("DET:Even", 3, wait=True, timeout=5)
    check("callback reject", g("DET:Even", use_monitor=False) == 0)
    check("refused put raises the WRITE alarm",
          g("DET:Even.SEVR", as_string=True, use_monitor=False) == "INVALID"
          and g("DET:Even.STAT", as_string=True, use_monitor=False) == "WRITE",
          (g("DET:Even.SEVR", as_string=True), g("DET:Even.STAT", as_string=True)))
    epics.caput("DET:Even", 2, wait=True, timeout=5)
    check("a good put clears the alarm",
          g("DET:Even.SEVR", as_string=True, use_monitor=False) == "NO_ALARM")
    try:
        epics.caput("DET:Locked", 9, wait=True, timeout=5)
        refused = False
    except epics.ca.CASeverityException:  # libca refuses: no write access was granted
        refused = True
    check("read-only refused", refused and g("DET:Locked", use_monitor=False) == 7)

    # put-notify completes when the acquisition ends; camonitor sees the counter
    epics.caput("DET:AcquireTime", 0.2, wait=True, timeout=5)
    epics.caput("DET:NumImages", 3, wait=True, timeout=5)
    seen = []
    epics.camonitor("DET:ArrayCounter_RBV", callback=lambda **kw: seen.append(kw["value"]))
    # camonitor reports only changes, so use a PV on the same channel as the barrier: its
    # first callback (the current value) arrives after camonitor's subscription, which was
    # requested first on the same circuit.
    barrier = []
    bp = epics.PV("DET:ArrayCounter_RBV", callback=lambda **kw: barrier.append(kw["value"]))
    wait_for("camonitor subscribed", lambda: len(barrier) >= 1, 30)
    bp.clear_callbacks()
    start = time.monotonic()
    ok = epics.caput("DET:Acquire", 1, wait=True, timeout=30)
    took = time.monotonic() - start
    check("put-notify waits for completion", ok == 1 and took >= 0.55, took)
    check("busy cleared at completion", g("DET:AcquireBusy", use_monitor=False) == 0)
    wait_for("monitor reaches final", lambda: seen and seen[-1] == 3)
    check("camonitor monotonic", seen == sorted(seen) and seen[-1] == 3 and len(seen) >= 3, seen)
    epics.camonitor_clear("DET:ArrayCounter_RBV")

    # camonitor on every type
    for name, value, want in [("DET:Gain", 3.5, 3.5), ("DET:BinX", 4, 4), ("DET:Label", "mon", "mon"),
                              ("DET:ImageMode", 1, 1)]:
        got = []
        p = epics.PV(name + "_RBV", callback=lambda **kw: got.append(kw["value"]))
        wait_for(f"monitor connects {name}", lambda: len(got) >= 1)
        epics.caput(name, value, wait=True, timeout=5)
        wait_for(f"camonitor {name}", lambda: got and got[-1] == want)
        check(f"camonitor {name}", True)
        p.clear_callbacks()
        p.disconnect()
    got = []
    p = epics.PV("HDF1:FilePath_RBV", callback=lambda **kw: got.append(kw.get("char_value")))
    wait_for("monitor connects FilePath", lambda: len(got) >= 1)
    epics.caput("HDF1:FilePath", "/data/monitored/", wait=True, timeout=5)
    wait_for("camonitor char waveform", lambda: got and got[-1] == "/data/monitored/")
    check("camonitor char waveform", True)

    # the 1M-element u16 image
    img = epics.PV("image1:ArrayData", auto_monitor=False)
    img.wait_for_connection(5)
    check("image count", img.count == 1048576 and img.nelm == 1048576, (img.count, img.nelm))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a = img.get(timeout=10, use_monitor=False)
        times.append(time.perf_counter() - t)
    a = np.asarray(a).astype(np.int16).view(np.uint16)
    # after 3 frames of the acquisition the image is ramp + 2
    want = ((np.arange(1048576) + 2) % 65536).astype(np.uint16)
    check("1M u16 image", len(a) == 1048576 and np.array_equal(a, want))
    print("FIGURE pyepics_1M_u16_get_ms", round(1000 * sorted(times)[len(times) // 2], 1), flush=True)
    got = []
    mon = epics.PV("image1:ArrayData", auto_monitor=True,
                   callback=lambda **kw: got.append(len(kw["value"])))
    wait_for("image monitor first", lambda: len(got) >= 1, 10)
    epics.caput("DET:AcquireTime", 0.0, wait=True, timeout=5)
    epics.caput("DET:NumImages", 2, wait=True, timeout=5)
    epics.caput("DET:Acquire", 1, wait=True, timeout=30)
    wait_for("image monitor updates", lambda: len(got) >= 2, 10)
    check("1M image monitor", all(n == 1048576 for n in got), got)
    mon.clear_callbacks()

    # caget round trip on an open channel (READ_NOTIFY with libca)
    rt = epics.PV("DET:AcquireTime", auto_monitor=False)
    rt.wait_for_connection(5)
    times = []
    for _ in range(300):
        t = time.perf_counter()
        rt.get(use_monitor=False, timeout=5)
        times.append(time.perf_counter() - t)
    times.sort()
    print("FIGURE pyepics_get_roundtrip_us_median", round(1e6 * times[len(times) // 2]), flush=True)
    print("FIGURE pyepics_get_roundtrip_us_p99", round(1e6 * times[int(len(times) * 0.99)]), flush=True)
    t = time.perf_counter()
    epics.caget("DET:Model_RBV", timeout=5)  # not used before: search + connect + read
    print("FIGURE pyepics_caget_fresh_channel_ms", round(1000 * (time.perf_counter() - t), 2), flush=True)


# ----------------------------------------------------------------------------------------
def run_caproto():
    import caproto
    from caproto import ChannelType
    from caproto.sync.client import read, write
    print("caproto", caproto.__version__, flush=True)
    r = lambda n, **kw: read(n, timeout=5, repeater=False, **kw)
    w = lambda n, v, **kw: write(n, v, timeout=5, repeater=False, **kw)
    check("double", list(r("DET:AcquireTime").data) == [0.1])
    check("float", abs(r("DET:Gain").data[0] - 1.5) < 1e-6)
    check("long", list(r("DET:NumImages").data) == [1])
    check("short", list(r("DET:BinX").data) == [1])
    check("enum as string (caproto default)", list(r("DET:ImageMode").data) == [b"Single"])
    check("enum as index", list(r("DET:ImageMode", force_int_enums=True).data) == [0])
    check("string", list(r("DET:Label").data) == [b"detflow"])
    check("char waveform", bytes(r("HDF1:FilePath").data).rstrip(b"\0") == b"/data/")
    ctrl = r("DET:AcquireTime", data_type="control")
    check("CTRL_DOUBLE", ctrl.metadata.precision == 3 and ctrl.metadata.units == b"s"
          and ctrl.metadata.upper_ctrl_limit == 10.0, ctrl.metadata)
    ctrl = r("DET:ImageMode", data_type="control")
    check("CTRL_ENUM", tuple(ctrl.metadata.enum_strings) == (b"Single", b"Multiple", b"Continuous"),
          ctrl.metadata.enum_strings)
    s = r("DET:AcquireTime", data_type=ChannelType.STRING)
    check("DOUBLE as STRING", list(s.data) == [b"0.100"], s.data)
    t = r("DET:NumImages", data_type="time")
    check("TIME_LONG stamp", abs(t.metadata.timestamp - time.time()) < 3600, t.metadata.timestamp)
    for dt in range(0, 35):  # every DBR type on a char array (pcaspy #26) and on an enum
        for name in ("HDF1:FilePath", "DET:ImageMode", "DET:Label", "DET:Waveform"):
            resp = r(name, data_type=ChannelType(dt))
            check(f"{name} as DBR {dt}", resp is not None) if dt in (0, 31, 34) else None
    check("all 35 DBR types on 4 PVs answered", True)
    # writes, with notify, every type
    for name, value, want in [("DET:AcquireTime", [0.5], [0.5]), ("DET:Gain", [2.5], [2.5]),
                              ("DET:NumImages", [6], [6]), ("DET:BinX", [3], [3]),
                              ("DET:ImageMode", [1], [1]), ("DET:Label", [b"cap"], [b"cap"])]:
        resp = w(name, value, notify=True)
        check(f"write notify {name}", resp.status.name == "ECA_NORMAL", resp.status)
        got = list(r(name + "_RBV", force_int_enums=True).data)
        check(f"readback {name}", got == want, got)
    resp = w("DET:ImageMode", ["Continuous"], notify=True, data_type=ChannelType.STRING)
    check("STRING to ENUM by name", list(r("DET:ImageMode_RBV", force_int_enums=True).data) == [2])
    resp = w("DET:ImageMode", ["1"], notify=True, data_type=ChannelType.STRING)
    check("STRING to ENUM by index", list(r("DET:ImageMode_RBV", force_int_enums=True).data) == [1])
    resp = w("DET:ImageMode", ["Bogus"], notify=True, data_type=ChannelType.STRING)
    check("STRING to ENUM refused", resp.status.name == "ECA_PUTFAIL", resp.status)
    resp = w("DET:AcquireTime", ["0.75"], notify=True, data_type=ChannelType.STRING)
    check("STRING to DOUBLE", list(r("DET:AcquireTime").data) == [0.75])
    resp = w("HDF1:FilePath", b"/data/caproto/", notify=True)  # exact bytes, no NUL
    check("char waveform write", bytes(r("HDF1:FilePath_RBV").data).rstrip(b"\0") == b"/data/caproto/")
    resp = w("DET:Even", [3], notify=True)
    check("callback reject status", resp.status.name == "ECA_PUTFAIL", resp.status)
    resp = w("DET:Even", [-2], notify=True)
    check("late fail status", resp.status.name == "ECA_PUTFAIL", resp.status)
    resp = w("DET:Even", [4], notify=True)
    check("accepted", resp.status.name == "ECA_NORMAL" and list(r("DET:Even").data) == [4])
    # 1M image with caproto
    t0 = time.perf_counter()
    img = r("image1:ArrayData")
    dt_img = time.perf_counter() - t0
    import numpy as np
    a = np.asarray(img.data).astype(np.int16).view(np.uint16)
    check("1M image caproto", len(a) == 1048576 and np.array_equal(a, ramp()))
    print("FIGURE caproto_1M_u16_read_ms", round(1000 * dt_img, 1), flush=True)

    # The CLI tools (with --no-repeater)
    py = sys.executable
    cli = lambda tool, *args: subprocess.run([py, "-m", f"caproto.commandline.{tool}", "--no-repeater", *args],
                                             capture_output=True, text=True, timeout=30)
    out = cli("get", "-d", "CTRL_DOUBLE", "DET:AcquireTime")
    check("caproto-get CTRL", out.returncode == 0 and "[0.75]" in out.stdout, out.stdout + out.stderr)
    out = cli("get", "-d", "STRING", "DET:AcquireTime")
    check("caproto-get STRING", out.returncode == 0 and "0.750" in out.stdout, out.stdout + out.stderr)
    out = cli("get", "-d", "31", "HDF1:FilePath")
    check("caproto-get CTRL_ENUM of char array", out.returncode == 0, out.stdout + out.stderr)
    out = cli("put", "DET:ImageMode", "Single")
    check("caproto-put enum by name", out.returncode == 0 and list(r("DET:ImageMode", force_int_enums=True).data) == [0],
          out.stdout + out.stderr)
    out = cli("put", "-c", "DET:AcquireTime", "0.125")
    check("caproto-put -c", out.returncode == 0 and list(r("DET:AcquireTime").data) == [0.125],
          out.stdout + out.stderr)
    out = cli("put", "-S", "HDF1:FileName", "scan_0042")
    check("caproto-put -S", out.returncode == 0, out.stdout + out.stderr)
    out = cli("get", "-S", "HDF1:FileName")
    check("caproto-get -S", "scan_0042" in out.stdout, out.stdout + out.stderr)
    mon = subprocess.Popen([py, "-m", "caproto.commandline.monitor", "--no-repeater", "--maximum", "4",
                            "DET:NumImages_RBV"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Write only once the monitor has subscribed: its first line is the current value. A fixed
    # sleep is not enough on a loaded machine, where starting Python takes seconds.
    first = ""
    end = time.monotonic() + 60
    while "DET:NumImages_RBV" not in first and time.monotonic() < end and mon.poll() is None:
        first = mon.stdout.readline()
    for v in (11, 12, 13):
        w("DET:NumImages", [v], notify=True)
        time.sleep(0.1)
    out, err = mon.communicate(timeout=30)
    lines = [l for l in (first + out).splitlines() if "DET:NumImages_RBV" in l]
    check("caproto-monitor", len(lines) == 4 and lines[-1].rstrip().endswith("[13]"), out + err)


# ----------------------------------------------------------------------------------------
def run_ophyd():
    import ophyd
    from ophyd import EpicsSignal, EpicsSignalRO
    from ophyd.areadetector.base import EpicsSignalWithRBV
    from ophyd.utils.errors import ReadOnlyError
    print("ophyd", ophyd.__version__, "control layer", ophyd.cl.name, flush=True)
    check("pyepics control layer", ophyd.cl.name == "pyepics")
    fp = EpicsSignal("HDF1:FilePath", string=True, name="fp")
    fp.wait_for_connection(timeout=5)
    fp.set("/data/ophyd/").wait(timeout=5)
    check("EpicsSignal string char waveform", fp.get() == "/data/ophyd/", fp.get())
    t = EpicsSignalWithRBV("DET:AcquireTime", name="t")
    t.wait_for_connection(timeout=5)
    t.set(0.3).wait(timeout=5)
    check("EpicsSignalWithRBV double", abs(t.get() - 0.3) < 1e-9, t.get())
    desc = t.describe()["t"]
    check("describe precision/units", desc.get("precision") == 3 and desc.get("units") == "s", desc)
    mode = EpicsSignalWithRBV("DET:ImageMode", string=True, name="mode")
    mode.wait_for_connection(timeout=5)
    mode.set("Continuous").wait(timeout=5)
    check("EpicsSignalWithRBV enum by string", mode.get() == "Continuous", mode.get())
    check("enum_strs", tuple(mode.enum_strs) == ("Single", "Multiple", "Continuous"), mode.enum_strs)
    n = EpicsSignalWithRBV("DET:NumImages", name="n")
    n.wait_for_connection(timeout=5)
    n.set(2).wait(timeout=5)
    check("EpicsSignalWithRBV long", n.get() == 2)
    lbl = EpicsSignalWithRBV("DET:Label", name="lbl", string=True)
    lbl.wait_for_connection(timeout=5)
    lbl.set("ophyd").wait(timeout=5)
    check("EpicsSignalWithRBV string", lbl.get() == "ophyd")
    disa = EpicsSignalRO("DET:AcquireTime_RBV.DISA", name="disa")
    disa.wait_for_connection(timeout=5)
    check("field .DISA", disa.get() == 0)
    counter = EpicsSignalRO("DET:ArrayCounter_RBV", name="counter")
    counter.wait_for_connection(timeout=5)
    before = counter.get()
    t.set(0.1).wait(timeout=5)
    acq = EpicsSignal("DET:Acquire", name="acq", put_complete=True)
    acq.wait_for_connection(timeout=5)
    start = time.monotonic()
    acq.set(1).wait(timeout=30)
    check("put_complete set waits for the acquisition", time.monotonic() - start >= 0.15)
    wait_for("counter monitor", lambda: counter.get() == before + 2)
    check("monitor cache follows", counter.get() == before + 2)
    locked = EpicsSignal("DET:Locked", name="locked")
    locked.wait_for_connection(timeout=5)
    try:
        locked.put(1)
        raised = False
    except ReadOnlyError:
        raised = True
    check("read-only refused by ophyd", raised)


ok = False
try:
    {"pyepics": run_pyepics, "caproto": run_caproto, "ophyd": run_ophyd}[SCENARIO]()
    print("ALL OK", flush=True)
    ok = True
except BaseException:
    import traceback
    traceback.print_exc()
finally:
    try:
        server.stdin.close()
        server.wait(timeout=5)
    except Exception:
        server.kill()
        server.wait()
    sys.stdout.flush()
    sys.stderr.flush()
    # libca's threads can keep a normal exit waiting; the checks are done.
    os._exit(0 if ok else 1)
