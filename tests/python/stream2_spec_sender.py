"""A DECTRIS Stream V2 sender written from the spec (shared/specs/stream2.md), not from detflow.

It sends one series (start, images, end) on a bound ZeroMQ PUSH socket with pyzmq and
cbor2, covering what the simulators do not: 8/16/32-bit pixels, `bslz4`, `lz4` and
uncompressed payloads, several channels, skipped image ids, messages without the 55799
prefix, f16/f32 floats in `start`, and bad messages (spec §4, issue point 6).

Compressed payloads are real HDF5 filter chunks (spec §6): h5py writes the frames into an
in-memory chunked dataset with hdf5plugin's Bitshuffle (32008, LZ4, default 8192-byte
blocks) or LZ4 (32004, 8192-byte blocks, as the DCU sends) filter, and `read_direct_chunk`
reads each chunk back. Every chunk is checked with DECTRIS's own decoder
(dectris.compression) before it is sent.

Before it sends anything it writes what a receiver must end up with to OUT (.npz):
`frames/<channel>` (images, H, W) holds every image's pixels (skipped ones too);
`payload/<image_id>/<channel>` the exact bytes of each compressed payload sent (uint8);
`meta.json` the series: ids, channels, dtype, which image ids were sent, which positions
must be present in the file, which messages were bad. Then it binds, prints one JSON line
`{"endpoint": "tcp://127.0.0.1:PORT"}` on stdout, and sends: `start` blocks until a
consumer connects (libzmq's PUSH does not send to nobody), bounded by --timeout.
With --dump DIR it writes the messages to files instead (see `dump`).

Bad messages (--bad KIND@K, comma-separated; each is sent after image K, or instead of it):
  malformed@K            after image K: a message that is not valid CBOR (cut in a map)
  foreign@K              after image K: image K again, of another series, other pixels
  truncated@K            instead of image K: its chunk with the last 16 bytes cut off
  unknown-compression@K  instead of image K: its chunk tagged with algorithm "xz"
A receiver must count each as corrupted and keep every good frame; images replaced by a
bad one are absent from the file.
"""

import argparse
import datetime
import io
import json
import os
import sys

import cbor2
import h5py
import hdf5plugin
import numpy as np
import zmq
from dectris.compression import decompress

DTYPES = {"u8": ("uint8", "u1", 64), "u16": ("uint16", "<u2", 69), "u32": ("uint32", "<u4", 70)}
CHANNEL_NAMES = ["threshold_1", "threshold_2", "difference", "threshold_3"]
TICKS = 50_000_000  # the DCU's time base, 50 MHz (spec §3.2)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="the .npz of expected results")
    p.add_argument("--bind", default="tcp://127.0.0.1", help="address; a free port is picked")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="u16")
    p.add_argument("--compression", choices=["bslz4", "lz4", "none"], default="bslz4")
    p.add_argument("--channels", type=int, default=1, choices=[1, 2, 3, 4])
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--size", default="203x151", help="WxH; odd by default (bitshuffle leftover)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip", default="", help="image ids not sent, e.g. 2,4")
    p.add_argument("--no-prefix", action="store_true", help="no 55799 tag in front")
    p.add_argument("--f16", action="store_true", help="start floats at their shortest width")
    p.add_argument("--bad", default="", help="KIND@K,... (see above)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds any send may wait")
    p.add_argument("--dump", help="write the messages to this folder instead of sending them")
    return p.parse_args()


def make_frames(args, shape, dtype):
    """Pixels per channel: low Poisson counts (compressible), a few hot pixels near the
    dtype's maximum, and a marker (image, channel) in the first two pixels."""
    top = np.iinfo(dtype).max
    frames = {}
    for c, name in enumerate(CHANNEL_NAMES[: args.channels]):
        rng = np.random.default_rng([args.seed, c])
        f = rng.poisson(2.0 + c, size=(args.images,) + shape).astype(dtype)
        hot = rng.integers(0, shape[0] * shape[1], size=(args.images, 5))
        for i in range(args.images):
            f[i].flat[hot[i]] = top - 1
            f[i].flat[0], f[i].flat[1] = i % (top + 1), c
        frames[name] = f
    return frames


def hdf5_chunks(stack, compression):
    """One HDF5 filter chunk per frame of `stack`, as h5py + hdf5plugin write them."""
    h, w = stack.shape[1:]
    filt = hdf5plugin.Bitshuffle(nelems=0, cname="lz4") if compression == "bslz4" else hdf5plugin.LZ4(nbytes=8192)
    with h5py.File(io.BytesIO(), "w") as f:
        d = f.create_dataset("d", data=stack, chunks=(1, h, w), **filt)
        chunks = [d.id.read_direct_chunk((i, 0, 0)) for i in range(len(stack))]
    assert all(mask == 0 for mask, _ in chunks), "a filter was skipped for a chunk"
    return [bytes(b) for _, b in chunks]


def typed_array(pixels, payload, compression, tag, elem_size):
    h, w = pixels.shape
    if compression == "none":
        inner = pixels.tobytes()
    else:
        inner = cbor2.CBORTag(56500, [compression, elem_size if compression == "bslz4" else 0, payload])
    return cbor2.CBORTag(40, [[h, w], cbor2.CBORTag(tag, inner)])


def start_message(args, series, shape, dtype_name, names):
    """The `start` keys of spec §3.1 (basic), `type` and the ids first."""
    if args.f16:
        # Exact in f16: 101.5, 75.5, 0.5, 1.0, 0.25; exact in f32 but not f16: 6000.5;
        # 12398.4 and 7.5e-05 need f64. canonical=True writes each at its shortest width.
        bx, by, ct, ft, wl, th = 101.5, 75.5, 0.5, 0.5, 1.0, 6000.5
    else:
        bx, by, ct, ft, wl, th = shape[1] / 2, shape[0] / 2, 0.001, 0.002, 1.0, 6000.5
    top = int(np.iinfo(DTYPES[args.dtype][1]).max)
    return {
        "type": "start",
        **series,
        "arm_date": datetime.datetime(2026, 12, 7, 9, 0, 0, 123000, tzinfo=datetime.timezone.utc),
        "beam_center_x": bx,
        "beam_center_y": by,
        "channels": names,
        "count_time": ct,
        "countrate_correction_enabled": False,
        "detector_description": "spec sender (tests/python/stream2_spec_sender.py)",
        "detector_serial_number": "SPEC-0001",
        "detector_translation": [0.0, 0.0, 0.25],
        "flatfield_enabled": False,
        "frame_time": ft,
        "goniometer": {"omega": {"increment": 0.25, "start": 10.0}},
        "image_dtype": dtype_name,
        "image_size_x": shape[1],
        "image_size_y": shape[0],
        "incident_energy": 12398.4 / wl,
        "incident_wavelength": wl,
        "number_of_images": args.images,
        "pixel_mask_enabled": False,
        "pixel_size_x": 7.5e-05,
        "pixel_size_y": 7.5e-05,
        "saturation_value": top - 1,
        "sensor_material": "Si",
        "sensor_thickness": 0.00045,
        "threshold_energy": {n: th + 1000 * k for k, n in enumerate(names)},
        "virtual_pixel_interpolation_enabled": False,
        "an_unknown_key": {"ignored": [1, 2.5, None]},
    }


def image_message(series, image_id, data):
    """An `image` in the DCU's key order (spec §2)."""
    return {
        "type": "image",
        **series,
        "image_id": image_id,
        "real_time": [999_995, TICKS],
        "series_date": datetime.datetime(2026, 12, 7, 9, 0, 1, tzinfo=datetime.timezone.utc),
        "start_time": [image_id * 1_000_000, TICKS],
        "stop_time": [image_id * 1_000_000 + 999_995, TICKS],
        "user_data": [image_id, "\U0001f499"],
        "data": data,
    }


def parse_bad(text):
    bad = {}
    for item in filter(None, text.split(",")):
        kind, at = item.split("@")
        assert kind in ("malformed", "foreign", "truncated", "unknown-compression"), kind
        bad.setdefault(int(at), []).append(kind)
    return bad


def build(args):
    """The messages to send, in order, and the expectations (written to --out)."""
    dtype_name, dtype, tag = DTYPES[args.dtype]
    elem = np.dtype(dtype).itemsize
    w, h = map(int, args.size.split("x"))
    names = CHANNEL_NAMES[: args.channels]
    frames = make_frames(args, (h, w), dtype)
    payloads = {n: hdf5_chunks(frames[n], args.compression) if args.compression != "none" else [None] * args.images for n in names}
    for n in names:
        for i, p in enumerate(payloads[n]):
            if p is not None:
                assert decompress(p, args.compression, elem_size=elem) == frames[n][i].tobytes(), (n, i)

    series = {"series_id": 7, "series_unique_id": "01JSPECSENDERSERIES0000007"}
    other = {"series_id": 8, "series_unique_id": "01JSPECSENDERSERIES0000008"}
    skip = {int(s) for s in args.skip.split(",") if s}
    bad = parse_bad(args.bad)
    start = start_message(args, series, (h, w), dtype_name, names)
    messages, present, sent, expected = [("start", start)], [], [], {}

    def data_for(i, payload_of):
        return {n: typed_array(frames[n][i], payload_of(n), args.compression, tag, elem) for n in names}

    for i in range(args.images):
        kinds = bad.get(i, [])
        good = i not in skip and not {"truncated", "unknown-compression"} & set(kinds)
        if "truncated" in kinds:
            if args.compression == "none":
                msg = image_message(series, i, {n: cbor2.CBORTag(40, [[h, w], cbor2.CBORTag(tag, frames[n][i].tobytes()[:-16])]) for n in names})
            else:
                msg = image_message(series, i, data_for(i, lambda n: payloads[n][i][:-16]))
            messages.append(("truncated", msg))
        elif "unknown-compression" in kinds:
            msg = image_message(series, i, {n: cbor2.CBORTag(40, [[h, w], cbor2.CBORTag(tag, cbor2.CBORTag(56500, ["xz", 0, b"\x00" * 32]))]) for n in names})
            messages.append(("unknown-compression", msg))
        elif good:
            messages.append(("image", image_message(series, i, data_for(i, lambda n: payloads[n][i]))))
            sent.append(i)
            for n in names:
                if payloads[n][i] is not None:
                    expected[f"payload/{i}/{n}"] = np.frombuffer(payloads[n][i], dtype="u1")
        present.append(good)
        if "malformed" in kinds:
            messages.append(("malformed", None))
        if "foreign" in kinds:
            alien = {n: np.full((h, w), 7, dtype=dtype) for n in names}
            alien_chunks = {n: hdf5_chunks(alien[n][None], args.compression)[0] if args.compression != "none" else None for n in names}
            msg = image_message(other, i, {n: typed_array(alien[n], alien_chunks[n], args.compression, tag, elem) for n in names})
            messages.append(("foreign", msg))
    messages.append(("end", {"type": "end", **series}))

    meta = {
        **series,
        "channels": names,
        "dtype": dtype_name,
        "compression": args.compression,
        "images": args.images,
        "size": [h, w],
        "sent": sent,
        "skipped": sorted(skip),
        "present": present,
        "bad": [k for k, _ in messages if k not in ("start", "image", "end")],
        "prefix": not args.no_prefix,
        "f16": args.f16,
        "start": {k: v for k, v in start.items() if isinstance(v, (int, float, str, bool))},
    }
    for n in names:
        expected[f"frames/{n}"] = frames[n]
    expected["meta.json"] = np.array(json.dumps(meta))
    return messages, expected


def encode(kind, msg, args):
    if kind == "malformed":
        # The 55799 prefix, a map of 9 pairs, "type": "image", then the text of a key cut short.
        return bytes.fromhex("d9d9f7a9647479706565696d616765697365726965735f")
    item = msg if args.no_prefix else cbor2.CBORTag(55799, msg)
    data = cbor2.dumps(item, canonical=args.f16 and kind == "start")
    if args.f16 and kind == "start":
        assert b"\xf9" in data and b"\xfa" in data and b"\xfb" in data, "start lacks f16/f32/f64"
    return data


def dump(folder, wire, expected):
    """NN-KIND.cbor per message in order; payload-I-CHANNEL.bin per compressed payload sent
    and frame-I-CHANNEL.bin per image's pixels (little-endian), for a decoder test."""
    for k, (kind, data) in enumerate(wire):
        with open(os.path.join(folder, f"{k:02}-{kind}.cbor"), "wb") as f:
            f.write(data)
    for key, value in expected.items():
        parts = key.split("/")
        if parts[0] == "payload":
            with open(os.path.join(folder, f"payload-{parts[1]}-{parts[2]}.bin"), "wb") as f:
                f.write(value.tobytes())
        elif parts[0] == "frames":
            for i, frame in enumerate(value):
                with open(os.path.join(folder, f"frame-{i}-{parts[1]}.bin"), "wb") as f:
                    f.write(frame.astype(frame.dtype.newbyteorder("<")).tobytes())


def main():
    args = parse_args()
    messages, expected = build(args)
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    np.savez(args.out, **expected)
    wire = [(kind, encode(kind, msg, args)) for kind, msg in messages]
    if args.dump:
        dump(args.dump, wire, expected)
        return

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.sndtimeo = int(args.timeout * 1000)
    sock.linger = int(args.timeout * 1000)
    port = sock.bind_to_random_port(args.bind)
    print(json.dumps({"endpoint": f"{args.bind}:{port}"}), flush=True)
    for kind, data in wire:
        try:
            sock.send(data)
        except zmq.Again:
            sys.exit(f"could not send {kind} within {args.timeout} s: no consumer?")
    sock.close()  # waits up to linger for the queued messages to leave
    ctx.term()
    print(json.dumps({"sent": len(wire), "bytes": sum(len(d) for _, d in wire)}), flush=True)


if __name__ == "__main__":
    main()
