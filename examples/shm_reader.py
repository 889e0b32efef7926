#!/usr/bin/env python3
"""Print the newest complete frame of a detflow shared-memory ring as one JSON line.

    python3 examples/shm_reader.py /dev/shm/detflow-ring [--timeout SECONDS]

prints {"frame_id": ..., "sequence": ..., "shape": [height, width], "dtype": "uint16",
"sum": ...} for the newest frame that could be read whole. The frame is read in place from a
numpy.memmap of the file (no copy): the sum is computed over the mapped slot, and the slot's
seqlock stamp is checked before and after, so a frame the producer overwrote meanwhile is
skipped. Needs only numpy. The layout (little-endian, offsets from the start of the file) is
the one documented in the detflow-ring crate docs ("Shared-memory layout").

Exit status 0 with the JSON line; 1 when no frame could be read within the timeout (the
message on stderr says why); 2 when the file is not a detflow ring.
"""

import argparse
import json
import sys
import time

import numpy as np

MAGIC = b"DFLWRING"
VERSION = 1

# areaDetector NDDataType codes.
DTYPES = {
    0: np.int8,
    1: np.uint8,
    2: np.int16,
    3: np.uint16,
    4: np.int32,
    5: np.uint32,
    6: np.int64,
    7: np.uint64,
    8: np.float32,
    9: np.float64,
}

# Control header.
OFF_VERSION, OFF_CONTROL_BYTES = 8, 12
OFF_SLOTS, OFF_SLOT_BYTES, OFF_STRIDE = 16, 24, 32
OFF_HEADERS, OFF_HEADER_BYTES, OFF_DATA = 40, 48, 56
OFF_HEAD, OFF_DROPPED, OFF_CLOSED = 128, 136, 152

# Slot header, one per slot, at OFF_HEADERS-value + index * header_bytes.
SLOT_HEADER = np.dtype(
    [
        ("stamp", "<u8"),
        ("frame_id", "<u8"),
        ("epics_sec", "<u4"),
        ("epics_nsec", "<u4"),
        ("unix_time_s", "<f8"),
        ("width", "<u4"),
        ("height", "<u4"),
        ("pixel_type", "<u4"),
        ("color_mode", "<u4"),
        ("len", "<u8"),
        ("reserved", "<u8"),
    ]
)
assert SLOT_HEADER.itemsize == 64


class NotARing(Exception):
    pass


class Ring:
    """A read-only numpy view of a detflow ring file."""

    def __init__(self, path):
        self.raw = np.memmap(path, dtype=np.uint8, mode="r")
        if self.raw.size < 256 or bytes(self.raw[:8]) != MAGIC:
            raise NotARing(f"{path}: no detflow ring magic (not a ring, or still being created)")
        version = self.u32(OFF_VERSION)
        if version != VERSION:
            raise NotARing(f"{path}: layout version {version}, this reader knows {VERSION}")
        self.slots = self.u64(OFF_SLOTS)
        self.slot_bytes = self.u64(OFF_SLOT_BYTES)
        self.stride = self.u64(OFF_STRIDE)
        self.data_offset = self.u64(OFF_DATA)
        headers = self.u64(OFF_HEADERS)
        if self.u64(OFF_HEADER_BYTES) != SLOT_HEADER.itemsize:
            raise NotARing(f"{path}: slot headers are not {SLOT_HEADER.itemsize} bytes")
        if self.raw.size < self.data_offset + self.slots * self.stride:
            raise NotARing(f"{path}: file shorter than its layout")
        self.headers = np.ndarray(
            (self.slots,), dtype=SLOT_HEADER, buffer=self.raw, offset=headers
        )

    def u32(self, offset):
        return int(self.raw[offset : offset + 4].view("<u4")[0])

    def u64(self, offset):
        return int(self.raw[offset : offset + 8].view("<u8")[0])

    def head(self):
        return self.u64(OFF_HEAD)

    def closed(self):
        return self.u64(OFF_CLOSED) != 0

    def stamp(self, index):
        # A fresh 8-byte aligned load of the mapped word on every call.
        return int(self.headers["stamp"][index])

    def read(self, seq):
        """The summary of sequence `seq`, or None if it is not committed or was overwritten."""
        index = seq % self.slots
        committed = 2 * seq + 2
        if self.stamp(index) != committed:
            return None
        h = self.headers[index].copy()  # metadata, 64 bytes
        dtype = DTYPES.get(int(h["pixel_type"]))
        length = int(h["len"])
        if dtype is None or length > self.slot_bytes:
            return None
        width, height = int(h["width"]), int(h["height"])
        itemsize = np.dtype(dtype).itemsize
        count = length // itemsize
        shape = [height, width]
        if count == 3 * width * height:
            shape.append(3)  # RGB1
        elif count != width * height:
            shape = [count]
        start = self.data_offset + index * self.stride
        pixels = np.ndarray(
            shape, dtype=np.dtype(dtype).newbyteorder("<"), buffer=self.raw, offset=start
        )  # in place: a view of the mapping
        if np.issubdtype(dtype, np.floating):
            total = float(pixels.sum(dtype=np.float64))
        elif np.issubdtype(dtype, np.signedinteger):
            total = int(pixels.sum(dtype=np.int64))
        else:
            total = int(pixels.sum(dtype=np.uint64))
        # The seqlock re-check: the producer marks a slot odd before rewriting it.
        if self.stamp(index) != committed:
            return None
        return {
            "frame_id": int(h["frame_id"]),
            "sequence": seq,
            "shape": shape,
            "dtype": np.dtype(dtype).name,
            "sum": total,
        }

    def newest(self):
        head = self.head()
        for seq in range(head - 1, max(head - self.slots, 0) - 1, -1):
            frame = self.read(seq)
            if frame is not None:
                return frame
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="the ring's shared-memory file (--ring-shm)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the file and a first frame (default 10)",
    )
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            frame = Ring(args.path).newest()
        except (FileNotFoundError, NotARing, ValueError) as e:
            if time.monotonic() >= deadline:
                print(f"shm_reader: {e}", file=sys.stderr)
                return 2
            frame = None
        if frame is not None:
            print(json.dumps(frame))
            return 0
        if time.monotonic() >= deadline:
            print(f"shm_reader: {args.path}: no complete frame within {args.timeout} s", file=sys.stderr)
            return 1
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
