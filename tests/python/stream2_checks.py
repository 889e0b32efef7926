"""Checks for tests/stream2_interop.rs: what a Stream V2 consumer or file must hold.

Each subcommand exits non-zero with an assertion naming what differs, and prints one JSON
line of what it checked:

  client-vs-expected CLIENT.npz EXPECTED.npz
      DECTRIS's client decoded what the spec sender sent (proves the sender standalone).
  client-vs-files CLIENT.npz HEADER_DETAIL REF_0.h5 [REF_1.h5 ...]
      DECTRIS's client decoded what `detflow stream2-send --user-data` sent: channel k of
      image i equals frame i of REF_k (written by `detflow acquire --seed S+k --codec
      none`), user_data is {"frame": i}, times are over 50 MHz.
  spec-file FILE.h5 EXPECTED.npz PASSTHROUGH
      `detflow acquire --backend stream2` stored what the spec sender sent: every channel,
      frames placed by image_id, gaps as the fill value with image_present 0, the start
      metadata; with PASSTHROUGH=1 each chunk is the payload that was sent, byte for byte.
  tickit-file FILE.h5 IMAGES
      the file written from tickit-devices' Eiger holds, at 0..IMAGES-1, the chunk tickit
      replays (its data/stream2/image.cbor) byte for byte, and h5py + hdf5plugin decode it
      to what dectris.compression decodes.
"""

import json
import sys

import h5py
import hdf5plugin  # noqa: F401  (registers filters 32004 and 32008 with h5py)
import numpy as np


def s(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def client_messages(path):
    z = np.load(path)
    return z, json.loads(str(z["messages.json"]))


def client_vs_expected(client, expected):
    z, messages = client_messages(client)
    e = np.load(expected)
    meta = json.loads(str(e["meta.json"]))
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "start" and kinds[-1] == "end", kinds
    images = [m for m in messages if m["type"] == "image"]
    assert [m["image_id"] for m in images] == meta["sent"], ([m["image_id"] for m in images], meta["sent"])
    start = messages[0]
    assert start["channels"] == meta["channels"], start["channels"]
    for key, value in meta["start"].items():
        assert start[key] == value, (key, start[key], value)
    for m in images:
        i = m["image_id"]
        for n in meta["channels"]:
            got = z[f"image/{i}/data/{n}"]
            want = e[f"frames/{n}"][i]
            assert got.dtype == want.dtype and got.shape == want.shape, (i, n, got.dtype, got.shape)
            assert np.array_equal(got, want), f"image {i} channel {n}: pixels differ"
        assert m["user_data"] == [i, "\U0001f499"], m["user_data"]
        assert m["real_time"] == [999_995, 50_000_000], m["real_time"]
    return {"images": len(images), "channels": len(meta["channels"])}


def client_vs_files(client, header_detail, refs):
    z, messages = client_messages(client)
    frames = []
    for ref in refs:
        with h5py.File(ref, "r") as f:
            frames.append(f["/entry/data/data"][()])
    n = frames[0].shape[0]
    kinds = [m["type"] for m in messages]
    assert kinds == ["start"] + ["image"] * n + ["end"], kinds
    start = messages[0]
    names = start["channels"]
    assert len(names) == len(refs), (names, refs)
    assert start["image_dtype"] == frames[0].dtype.name, (start["image_dtype"], frames[0].dtype)
    assert [start["image_size_y"], start["image_size_x"]] == list(frames[0].shape[1:])
    assert start["number_of_images"] == n, start["number_of_images"]
    for m in messages[1:-1]:
        i = m["image_id"]
        for k, name in enumerate(names):
            got = z[f"image/{i}/data/{name}"]
            assert got.dtype == frames[k].dtype, (i, name, got.dtype)
            assert np.array_equal(got, frames[k][i]), f"image {i} channel {name}: not frame {i} of {refs[k]}"
    assert sorted(m["image_id"] for m in messages[1:-1]) == list(range(n))
    for m in messages[1:-1]:
        assert m["user_data"] == {"frame": m["image_id"]}, m.get("user_data")
        assert m["real_time"][1] == 50_000_000 and m["start_time"][1] == 50_000_000, m
    tables = ["pixel_mask", "flatfield", "countrate_correction_lookup_table"]
    if header_detail == "all":
        for name in names:
            mask = z[f"start/pixel_mask/{name}"]
            flat = z[f"start/flatfield/{name}"]
            assert mask.shape == frames[0].shape[1:] and mask.dtype == np.dtype("<u4"), mask.dtype
            assert flat.shape == frames[0].shape[1:] and flat.dtype == np.dtype("<f4"), flat.dtype
        assert z["start/countrate_correction_lookup_table"].dtype == np.dtype("<u4")
    else:
        assert not any(t in start for t in tables), [t for t in tables if t in start]
    return {"images": n, "channels": names}


def find(f, name):
    """Paths of the datasets called `name` anywhere in the file."""
    hits = []
    f.visititems(lambda p, o: hits.append(p) if isinstance(o, h5py.Dataset) and p.split("/")[-1] == name else None)
    return hits


def spec_file(path, expected, passthrough):
    e = np.load(expected)
    meta = json.loads(str(e["meta.json"]))
    present = np.array(meta["present"], dtype=np.uint8)
    n, names = meta["images"], meta["channels"]
    f = h5py.File(path, "r")
    # Trailing positions that never arrived may be absent from the datasets; every image
    # up to the last one present is a row.
    extent = int(np.nonzero(present)[0].max()) + 1
    first = f["/entry/data/data"]
    assert first.id == f[f"/entry/data/{names[0]}"].id, "/entry/data/data is not the first channel"
    mask = f["/entry/data/image_present"][()]
    assert mask.shape[0] >= extent, mask.shape
    assert np.array_equal(mask[:extent], present[:extent]), (mask, present)
    assert not mask[extent:].any(), mask
    filters = []
    for name in names:
        d = f[f"/entry/data/{name}"]
        want = e[f"frames/{name}"]
        plist = d.id.get_create_plist()
        filters.append(plist.get_filter(0)[0] if plist.get_nfilters() else None)
        assert d.dtype == want.dtype, (name, d.dtype, want.dtype)
        assert d.shape[0] >= extent and d.shape[1:] == want.shape[1:], (name, d.shape)
        assert d.chunks == (1,) + want.shape[1:], (name, d.chunks)
        fill = np.iinfo(d.dtype).max
        for i in range(extent):
            if present[i]:
                assert np.array_equal(d[i], want[i]), f"channel {name} image {i}: pixels differ"
                if passthrough:
                    mask_bits, chunk = d.id.read_direct_chunk((i, 0, 0))
                    sent = e[f"payload/{i}/{name}"].tobytes()
                    assert mask_bits == 0 and chunk == sent, f"channel {name} image {i}: chunk is not the payload sent"
            else:
                assert (d[i] == fill).all(), f"channel {name} image {i} is missing but does not read as {fill}"
        if passthrough:
            assert filters[-1] == {"bslz4": 32008, "lz4": 32004}[meta["compression"]], filters
    ids = find(f, "image_id")
    assert ids, "no image_id dataset"
    image_id = f[ids[0]][()]
    for i in range(extent):
        if present[i]:
            assert image_id[i] == i, (ids[0], image_id[:extent])
    det = f["/entry/instrument/detector"]
    st = meta["start"]
    for key, nx in [("beam_center_x", "beam_center_x"), ("beam_center_y", "beam_center_y"),
                    ("count_time", "count_time"), ("frame_time", "frame_time"),
                    ("pixel_size_x", "x_pixel_size"), ("pixel_size_y", "y_pixel_size"),
                    ("sensor_thickness", "sensor_thickness"), ("saturation_value", "saturation_value")]:
        assert det[nx][()] == st[key], (nx, det[nx][()], st[key])
    for key, nx in [("detector_description", "description"), ("detector_serial_number", "serial_number"),
                    ("sensor_material", "sensor_material")]:
        assert s(det[nx][()]) == st[key], (nx, det[nx][()], st[key])
    beam = f["/entry/instrument/beam"]
    assert beam["incident_wavelength"][()] == st["incident_wavelength"]
    assert beam["incident_energy"][()] == st["incident_energy"]
    return {"extent": extent, "present": int(present[:extent].sum()), "channels": names,
            "image_id": ids[0], "filters": filters}


def tickit_payload():
    """The bslz4 chunk and shape in tickit-devices' replayed image message."""
    import cbor2
    from tickit_devices.eiger.stream.eiger_stream_2 import DATA_PATH

    msg = cbor2.loads((DATA_PATH / "image.cbor").read_bytes())
    msg = msg.value if isinstance(msg, cbor2.CBORTag) else msg
    (name, md), = msg["data"].items()
    assert md.tag == 40, md.tag
    (h, w), typed = md.value
    assert typed.tag == 69 and typed.value.tag == 56500, (typed.tag, typed.value.tag)
    algorithm, elem, payload = typed.value.value
    assert (algorithm, elem) == ("bslz4", 2), (algorithm, elem)
    return name, (h, w), payload


def tickit_file(path, images):
    from dectris.compression import decompress

    name, shape, payload = tickit_payload()
    want = np.frombuffer(decompress(payload, "bslz4", elem_size=2), dtype="<u2").reshape(shape)
    f = h5py.File(path, "r")
    d = f["/entry/data/data"]
    assert d.id == f[f"/entry/data/{name}"].id
    assert d.shape == (images,) + shape and d.dtype == np.uint16, (d.shape, d.dtype)
    assert d.id.get_create_plist().get_filter(0)[0] == 32008
    for i in range(images):
        mask_bits, chunk = d.id.read_direct_chunk((i, 0, 0))
        assert mask_bits == 0 and chunk == payload, f"image {i}: the chunk is not tickit's payload"
        assert np.array_equal(d[i], want), f"image {i}: h5py + hdf5plugin decode differs from dectris.compression"
    assert f["/entry/data/image_present"][()].tolist() == [1] * images
    return {"images": images, "shape": list(shape), "chunk_bytes": len(payload), "sum0": int(want.sum(dtype=np.uint64))}


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "client-vs-expected":
        out = client_vs_expected(*rest)
    elif cmd == "client-vs-files":
        out = client_vs_files(rest[0], rest[1], rest[2:])
    elif cmd == "spec-file":
        out = spec_file(rest[0], rest[1], rest[2] == "1")
    elif cmd == "tickit-file":
        out = tickit_file(rest[0], int(rest[1]))
    else:
        sys.exit(f"unknown check {cmd}")
    print(json.dumps(out))
