"""Drive tickit-devices' simulated EIGER through its SIMPLON REST API, as a beamline would.

usage: tickit_eiger_drive.py REST_PORT IMAGES [TIMEOUT_S]

Waits (up to TIMEOUT_S) for the REST server on 127.0.0.1:REST_PORT to accept connections,
then: stream config format=cbor, mode=enabled, header_detail=basic; detector config
nimages=IMAGES, ntrigger=1, trigger_mode=ints, count_time and frame_time 0.01 s; arm,
trigger (returns once the simulator has produced every image), disarm. The consumer must
already be connected or connect later: tickit's PUSH socket (bound only, see
tickit_bind_only.py) holds messages until one is.
Prints one JSON line: every request with its HTTP status and response body.
"""

import json
import socket
import sys
import time
import urllib.request

API = "1.8.0"


def wait_for_port(port, timeout_s):
    end = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError as e:
            if time.monotonic() > end:
                sys.exit(f"the tickit REST server on 127.0.0.1:{port} did not come up in {timeout_s} s: {e}")
            time.sleep(0.05)


def main():
    port, images = int(sys.argv[1]), int(sys.argv[2])
    timeout_s = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    wait_for_port(port, timeout_s)
    calls = []

    def put(path, value=None):
        body = b"" if value is None else json.dumps({"value": value}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/{path}",
            data=body,
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            calls.append({"PUT": f"/{path}", "value": value, "status": r.status, "body": r.read().decode()})
        assert r.status == 200, calls[-1]

    put(f"stream/api/{API}/config/format", "cbor")
    put(f"stream/api/{API}/config/mode", "enabled")
    put(f"stream/api/{API}/config/header_detail", "basic")
    put(f"detector/api/{API}/config/nimages", images)
    put(f"detector/api/{API}/config/ntrigger", 1)
    put(f"detector/api/{API}/config/trigger_mode", "ints")
    put(f"detector/api/{API}/config/count_time", 0.01)
    put(f"detector/api/{API}/config/frame_time", 0.01)
    put(f"detector/api/{API}/command/arm")
    put(f"detector/api/{API}/command/trigger")
    put(f"detector/api/{API}/command/disarm")
    print(json.dumps(calls), flush=True)


if __name__ == "__main__":
    main()
