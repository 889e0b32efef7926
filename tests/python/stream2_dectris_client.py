"""DECTRIS's official Stream V2 example client, adapted to record what it receives.

Source: github.com/dectris/documentation, stream_v2/examples/client.py at commit
4795bd16dcadfd6084a1f25f04bc8e1f80c7eda3 (the current version on main). Everything from
the imports to `tag_hook` is upstream's code, unchanged: the tag decoders, and
dectris.compression's `decompress` for tag 56500 (bslz4, lz4). Only the `__main__` part
differs: upstream pretty-prints each message forever; here the client takes an endpoint
(not a host with the fixed port 31001), receives one series from `start` to `end` with a
deadline on every receive, and writes what it decoded to an .npz file:

- `image/<image_id>/data/<channel>`: every channel of every image, as decoded (numpy
  arrays);
- `start/<key>/<channel>` or `start/<key>`: the start message's arrays (pixel_mask,
  flatfield, countrate_correction_lookup_table with header_detail=all);
- `messages.json` (a 0-d unicode array): every message in arrival order with its scalar
  fields (dates as ISO text, arrays replaced by their .npz key and shape, dtype).

It prints one JSON line at the end: messages, images and the 56500 algorithms seen.

The zmq socket and the recording are the only additions; a reader can diff this file
against upstream's to check that the decoding is DECTRIS's own.

usage: stream2_dectris_client.py ENDPOINT OUT.npz [TIMEOUT_S]
"""

import cbor2
from dectris.compression import decompress
import numpy as np


def decode_multi_dim_array(tag, column_major):
    dimensions, contents = tag.value
    if isinstance(contents, list):
        array = np.empty((len(contents),), dtype=object)
        array[:] = contents
    elif isinstance(contents, (np.ndarray, np.generic)):
        array = contents
    else:
        raise cbor2.CBORDecodeValueError("expected array or typed array")
    return array.reshape(dimensions, order="F" if column_major else "C")


def decode_typed_array(tag, dtype):
    if not isinstance(tag.value, bytes):
        raise cbor2.CBORDecodeValueError("expected byte string in typed array")
    return np.frombuffer(tag.value, dtype=dtype)


def decode_dectris_compression(tag):
    algorithm, elem_size, encoded = tag.value
    return decompress(encoded, algorithm, elem_size=elem_size)


tag_decoders = {
    40: lambda tag: decode_multi_dim_array(tag, column_major=False),
    64: lambda tag: decode_typed_array(tag, dtype="u1"),
    65: lambda tag: decode_typed_array(tag, dtype=">u2"),
    66: lambda tag: decode_typed_array(tag, dtype=">u4"),
    67: lambda tag: decode_typed_array(tag, dtype=">u8"),
    68: lambda tag: decode_typed_array(tag, dtype="u1"),
    69: lambda tag: decode_typed_array(tag, dtype="<u2"),
    70: lambda tag: decode_typed_array(tag, dtype="<u4"),
    71: lambda tag: decode_typed_array(tag, dtype="<u8"),
    72: lambda tag: decode_typed_array(tag, dtype="i1"),
    73: lambda tag: decode_typed_array(tag, dtype=">i2"),
    74: lambda tag: decode_typed_array(tag, dtype=">i4"),
    75: lambda tag: decode_typed_array(tag, dtype=">i8"),
    77: lambda tag: decode_typed_array(tag, dtype="<i2"),
    78: lambda tag: decode_typed_array(tag, dtype="<i4"),
    79: lambda tag: decode_typed_array(tag, dtype="<i8"),
    80: lambda tag: decode_typed_array(tag, dtype=">f2"),
    81: lambda tag: decode_typed_array(tag, dtype=">f4"),
    82: lambda tag: decode_typed_array(tag, dtype=">f8"),
    83: lambda tag: decode_typed_array(tag, dtype=">f16"),
    84: lambda tag: decode_typed_array(tag, dtype="<f2"),
    85: lambda tag: decode_typed_array(tag, dtype="<f4"),
    86: lambda tag: decode_typed_array(tag, dtype="<f8"),
    87: lambda tag: decode_typed_array(tag, dtype="<f16"),
    1040: lambda tag: decode_multi_dim_array(tag, column_major=True),
    56500: lambda tag: decode_dectris_compression(tag),
}


def tag_hook(decoder, tag):
    tag_decoder = tag_decoders.get(tag.tag)
    return tag_decoder(tag) if tag_decoder else tag


# ---- detflow's addition: record one series instead of printing forever ----


def record(value, key, arrays):
    """`value` as JSON-able data; numpy arrays go to `arrays[key]` and are named."""
    import datetime

    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"npz": key, "shape": list(value.shape), "dtype": value.dtype.str}
    if isinstance(value, dict):
        return {k: record(v, f"{key}/{k}", arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [record(v, f"{key}/{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return {"bytes_hex": value.hex()}
    if isinstance(value, cbor2.CBORTag):
        return {"cbor_tag": value.tag, "value": record(value.value, key, arrays)}
    return value


if __name__ == "__main__":
    import json
    import sys
    import zmq

    if len(sys.argv) not in (3, 4):
        sys.exit(f"usage: {sys.argv[0]} ENDPOINT OUT.npz [TIMEOUT_S]")
    endpoint, out = sys.argv[1], sys.argv[2]
    timeout_s = float(sys.argv[3]) if len(sys.argv) == 4 else 60.0

    # Which 56500 algorithms arrived, so a test can tell bslz4 from lz4 from none; the
    # decoding itself is upstream's tag_hook.
    algorithms = set()

    def recording_tag_hook(decoder, tag):
        if tag.tag == 56500:
            algorithms.add(tag.value[0])
        return tag_hook(decoder, tag)

    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.rcvtimeo = int(timeout_s * 1000)
    arrays, messages = {}, []
    with socket.connect(endpoint):
        print(f"PULL {endpoint}", flush=True)
        while True:
            try:
                message = socket.recv()
            except zmq.Again:
                sys.exit(f"no message within {timeout_s} s after {len(messages)} messages")
            message = cbor2.loads(message, tag_hook=recording_tag_hook)
            kind = message["type"]
            if kind == "image":
                prefix = f"image/{message['image_id']}"
            else:
                prefix = kind
            messages.append(record(dict(message), prefix, arrays))
            if kind == "end":
                break
    arrays["messages.json"] = np.array(json.dumps(messages))
    np.savez(out, **arrays)
    images = sum(1 for m in messages if m["type"] == "image")
    summary = {"messages": len(messages), "images": images, "compression": sorted(algorithms)}
    print(json.dumps(summary), flush=True)
