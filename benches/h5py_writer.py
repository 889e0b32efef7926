"""What a user would run instead: a plain h5py + hdf5plugin frame writer, on detflow's frames.

Reads the frames of a detflow file (written with --codec none), then for each filter writes
them the way perf/perf-baseline.md section 4 describes the usual Python appender: one file,
a dataset (0, H, W) with maxshape (None, H, W) and chunk = one frame, and per frame
`resize(i + 1)` then `d[i] = frame`, through HDF5's filter pipeline, file closed inside the
timed region. Prints one JSON object per filter on stdout:
{"writer": "h5py", "filter": ..., "dtype": ..., "frames": ..., "fps": ..., "mb_per_s": ..., "ratio": ...}

Usage: python benches/h5py_writer.py SOURCE.h5 OUTDIR FRAMES FILTER[,FILTER...]
FILTER: none, gzip-1, gzip-6, lz4, bslz4, zstd, blosc-lz4
`detflow bench --compare-h5py PYTHON` runs this on the frames of each of its runs.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("BLOSC_NTHREADS", "1")
import json
import sys
import time

import h5py
import hdf5plugin
import numpy as np

FILTERS = {
    "none": {},
    "gzip-1": dict(compression="gzip", compression_opts=1),
    "gzip-6": dict(compression="gzip", compression_opts=6),
    "lz4": dict(hdf5plugin.LZ4()),
    "bslz4": dict(hdf5plugin.Bitshuffle(cname="lz4")),
    "zstd": dict(hdf5plugin.Zstd()),
    "blosc-lz4": dict(hdf5plugin.Blosc(cname="lz4", shuffle=hdf5plugin.Blosc.SHUFFLE)),
}


def main():
    source, outdir, n, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
    with h5py.File(source, "r", swmr=True) as f:
        frames = f["/entry/data/data"][: min(n, 64)]
    shape = frames.shape[1:]
    for name in names:
        kw = FILTERS[name]
        path = os.path.join(outdir, ".h5py_writer_%d_%s.h5" % (os.getpid(), name))
        t = time.perf_counter()
        f = h5py.File(path, "w")
        d = f.create_dataset("data", shape=(0,) + shape, maxshape=(None,) + shape,
                             chunks=(1,) + shape, dtype=frames.dtype, **kw)
        for i in range(n):
            d.resize(i + 1, axis=0)
            d[i] = frames[i % len(frames)]
        f.close()
        dt = time.perf_counter() - t
        size = os.path.getsize(path)
        os.remove(path)
        raw = n * frames[0].nbytes
        print(json.dumps({"writer": "h5py", "filter": name, "dtype": str(frames.dtype), "frames": n,
                          "fps": n / dt, "mb_per_s": raw / dt / 1e6, "ratio": raw / size}), flush=True)


if __name__ == "__main__":
    main()
