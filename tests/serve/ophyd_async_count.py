"""ophyd-async's SimDetector with the HDF writer against the IOC.

`SimDetector("ad:", ADWriterFactory.hdf(path_provider))` connects (every one of its 90 PVs,
type-checked), then two runs: `bp.count` of 3 (one frame per trigger, one file) and a fly
scan of 8 frames (prepare, kickoff, complete, collect). For each run the StreamResource
must name the file actually written under DATA_DIR with dataset /entry/data/data, the
StreamDatum indices must cover every frame once, and h5py must read that many frames of the
detector's shape and type from the file.

Usage: ophyd_async_count.py DATA_DIR      (prints OPHYD-ASYNC OK at the end)
"""
import os
import pathlib
import sys
import time
from urllib.parse import urlparse

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import h5py
import numpy as np
from bluesky import RunEngine
from ophyd_async.core import StaticPathProvider, TriggerInfo, UUIDFilenameProvider, init_devices
from ophyd_async.epics.adcore import ADWriterFactory
from ophyd_async.epics.adsimdetector import SimDetector


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"CHECK {what}", flush=True)


def fly(det, n, livetime, deadtime):
    @bpp.stage_decorator([det])
    @bpp.run_decorator()
    def inner():
        info = TriggerInfo(number_of_events=n, livetime=livetime, deadtime=deadtime)
        yield from bps.prepare(det, info, wait=True)
        yield from bps.declare_stream(det, name="primary", collect=True)
        yield from bps.kickoff(det, wait=True)
        yield from bps.complete(det, wait=True)
        yield from bps.collect(det, name="primary")

    return (yield from inner())


def check_run(docs, data_dir, frames, shape, dtype, label):
    """The run's stream documents describe exactly the file h5py reads."""
    names = [name for name, _ in docs]
    print(f"{label}: documents {names}", flush=True)
    resources = [d for n, d in docs if n == "stream_resource" and d["data_key"] == "det"]
    check(len(resources) == 1, f"{label}: one StreamResource for data key det")
    res = resources[0]
    print(f"{label}: StreamResource {res}", flush=True)
    check(res["mimetype"] == "application/x-hdf5", f"{label}: mimetype application/x-hdf5")
    check(res["parameters"]["dataset"] == "/entry/data/data",
          f"{label}: parameters dataset /entry/data/data")
    uri = urlparse(res["uri"])
    path = pathlib.Path(uri.path)
    check(uri.scheme == "file" and path.parent == data_dir,
          f"{label}: uri {res['uri']} is a file in {data_dir}")
    check(path.is_file(), f"{label}: {path} was written")
    datums = [d for n, d in docs if n == "stream_datum" and d["stream_resource"] == res["uid"]]
    for d in datums:
        print(f"{label}: StreamDatum indices {d['indices']} seq_nums {d['seq_nums']}")
    covered = [i for d in datums for i in range(d["indices"]["start"], d["indices"]["stop"])]
    check(covered == list(range(frames)),
          f"{label}: StreamDatum indices cover 0..{frames} once, in order")
    with h5py.File(path, "r") as f:
        dset = f[res["parameters"]["dataset"]]
        check(dset.shape == (frames, *shape), f"{label}: h5py reads {dset.shape}")
        check(dset.dtype == dtype, f"{label}: dtype {dset.dtype}")
        check(dset[...].any(), f"{label}: frames hold data")
    return path


def main():
    data_dir = pathlib.Path(sys.argv[1])
    RE = RunEngine({}, call_returns_result=True)
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    path_provider = StaticPathProvider(UUIDFilenameProvider(), data_dir)
    t0 = time.monotonic()
    with init_devices():
        det = SimDetector("ad:", ADWriterFactory.hdf(path_provider))
    check(det.name == "det", f"connected in {time.monotonic() - t0:.2f} s")

    def values():
        d = det.driver
        return (yield from bps.rd(d.array_size_y)), (yield from bps.rd(d.array_size_x)), \
            (yield from bps.rd(d.data_type))

    height, width, data_type = RE(values()).plan_result
    shape, dtype = (height, width), np.dtype(data_type.value.lower())
    check(height > 0 and width > 0, f"driver frame {width}x{height} {data_type.value}")
    RE(bps.mv(det.driver.acquire_time, 0.005, det.driver.acquire_period, 0.01))

    docs.clear()
    RE(bp.count([det], num=3))
    first = check_run(docs, data_dir, 3, shape, dtype, "bp.count")

    docs.clear()
    RE(fly(det, 8, 0.005, 0.005))
    second = check_run(docs, data_dir, 8, shape, dtype, "fly scan")
    full_name = RE(bps.rd(det.hdf.full_file_name)).plan_result
    check(full_name == str(second), f"HDF1:FullFileName_RBV {full_name} is the fly scan's file")
    captured = RE(bps.rd(det.hdf.num_captured)).plan_result
    check(captured == 8, f"HDF1:NumCaptured_RBV {captured} == 8")
    check(second != first, "each run wrote its own file")
    check(sorted(p.name for p in data_dir.iterdir()) == sorted([first.name, second.name]),
          f"nothing else in {data_dir}")
    print("OPHYD-ASYNC OK", flush=True)


if __name__ == "__main__":
    main()
