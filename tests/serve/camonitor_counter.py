"""pyepics camonitor of cam1:ArrayCounter_RBV while the detector takes N frames.

ImageMode Multiple, NumImages N, AcquirePeriod 0.01 s, a 256x256 region (the simulated
detector renders frames on this machine's CPU in real time: small frames keep a loaded CI
machine from losing any, which would be counted, not hidden, but is not this test), then Acquire=1 with put-callback
(pyepics `caput(wait=True)`): the callback must come back only when acquisition is done,
and the monitor must have delivered every count from start+1 to start+N, in order.

Usage: camonitor_counter.py N      (prints CAMONITOR OK at the end)
"""
import sys
import threading
import time

import epics

P = "ad:cam1:"


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"CHECK {what}", flush=True)


def wait_until(what, cond, timeout_s, lock):
    """Poll cond() (under lock) until it holds; fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        with lock:
            if cond():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never came in {timeout_s} s")
        time.sleep(0.02)


def put(name, value):
    check(epics.caput(P + name, value, wait=True, timeout=10) == 1, f"caput {name}={value!r}")


def main():
    n = int(sys.argv[1])
    put("SizeX", 256)
    put("SizeY", 256)
    put("ImageMode", "Multiple")
    put("NumImages", n)
    put("AcquireTime", 0.005)
    put("AcquirePeriod", 0.01)
    start = epics.caget(P + "ArrayCounter_RBV", timeout=10)
    check(start is not None, f"ArrayCounter_RBV reads {start}")

    seen, lock = [], threading.Lock()

    def on_counter(pvname=None, value=None, **kw):
        with lock:
            seen.append(int(value))

    # A PV made with its callback calls it for the subscription's first update (the current
    # value), which says the subscription is live: only then start. (epics.camonitor adds its
    # callback after connecting, so it may never see that first update.)
    monitor = epics.PV(P + "ArrayCounter_RBV", auto_monitor=True, callback=on_counter)
    wait_until("the monitor's first update", lambda: len(seen) >= 1, 60, lock)
    check(epics.caget(P + "DetectorState_RBV", as_string=True) == "Idle", "detector is Idle")

    t0 = time.monotonic()
    done = epics.caput(P + "Acquire", 1, wait=True, timeout=60)
    took = time.monotonic() - t0
    counter = epics.caget(P + "ArrayCounter_RBV", use_monitor=False)
    images = epics.caget(P + "NumImagesCounter_RBV", use_monitor=False)
    check(done == 1, f"Acquire=1 put-callback came back after {took:.2f} s")

    # The monitor: every value the counter took, in order, whatever the detector made.
    wait_until(f"the monitor update {counter}", lambda: seen and seen[-1] >= counter, 60, lock)
    # Anything extra the server sent is on the same circuit before the reply to this read,
    # and its callback has run when the read returns.
    check(epics.caget(P + "ArrayCounter_RBV", use_monitor=False, timeout=10) == counter,
          f"ArrayCounter_RBV still {counter}")
    monitor.clear_callbacks()
    with lock:
        after = [v for v in seen if v > start]
        before = [v for v in seen if v <= start]
    check(set(before) <= {start}, f"no update below the start value {start} ({before})")
    expected = list(range(start + 1, counter + 1))
    missing = sorted(set(expected) - set(after))
    check(after == expected,
          f"the monitor saw each of {start + 1}..{counter} once, in order "
          f"(saw {len(after)}, missing {missing[:10]}, first {after[:5]}, last {after[-5:]})")

    # The acquisition: NumImages frames, and the put-callback waited for them.
    check(images == n, f"the detector made NumImages={n} frames "
          f"(NumImagesCounter_RBV {images} when the put-callback came back)")
    check(counter == start + n, f"ArrayCounter_RBV went from {start} to {counter} == {start} + {n}")
    check(took >= 0.9 * n * 0.01, f"the put-callback waited for {n} frames at 0.01 s")
    check(epics.caget(P + "Acquire_RBV") == 0, "Acquire_RBV back to 0")
    check(epics.caget(P + "AcquireBusy") == 0, "AcquireBusy back to 0")
    check(epics.caget(P + "DetectorState_RBV", as_string=True) == "Idle", "detector Idle again")
    print("CAMONITOR OK", flush=True)


if __name__ == "__main__":
    main()
