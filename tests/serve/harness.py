"""Run one `detflow serve` client scenario: set up the sandbox, start the IOC, wait until it
answers Channel Access searches, run the client, then stop the IOC with SIGTERM.

Standard library only: it runs before (and beside) the client venv's packages. The one
argument is a JSON object written by tests/serve_clients.rs:

  netns        bring up `lo` (we are in a fresh network namespace)
  private_tmp  mount a fresh tmpfs on /tmp (we are in a fresh mount namespace); each path in
               `keep` that lies under /tmp is bound back from the host's /tmp first
  symlinks     [[link, target], ...] made after /tmp is ready
  dirs         directories made after /tmp is ready
  ioc          the IOC command line; its stdout and stderr go to our stderr
  ca_port      the CA server port searched for readiness
  ready_pvs    PV names that must answer a CA search before the client starts
  client       the client command line; its stdout and stderr go to our stdout
  client_timeout_s, ready_timeout_s, stop_timeout_s

Our stdout ends with lines the test reads: `HARNESS ioc ready after S s`,
`HARNESS client exit N`, `HARNESS ioc exit N` (or `HARNESS ioc killed ...`).
"""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

CA_MINOR_VERSION = 13
CA_PROTO_VERSION = 0
CA_PROTO_SEARCH = 6
DONT_REPLY = 5


def say(msg):
    print(f"HARNESS {msg}", flush=True)


def run(*cmd, **kw):
    subprocess.run(cmd, check=True, **kw)


def private_tmp(keep):
    """A fresh tmpfs on /tmp; `keep` paths under the host's /tmp stay reachable."""
    held = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    run("mount", "-t", "tmpfs", "-o", "mode=1777", "detflow-serve-test", "/tmp")
    for path in keep:
        path = os.path.realpath(path)
        if path != "/tmp" and not path.startswith("/tmp/"):
            continue
        os.makedirs(path, exist_ok=True)
        source = f"/proc/self/fd/{held}/{os.path.relpath(path, '/tmp')}"
        run("mount", "--no-canonicalize", "--bind", source, path, pass_fds=(held,))
    os.close(held)


def search_packet(named):
    """One datagram searching each (cid, name) of `named`, under its own cid."""
    out = struct.pack(">HHHHII", CA_PROTO_VERSION, 0, 0, CA_MINOR_VERSION, 0, 0)
    for cid, name in named:
        raw = name.encode() + b"\0"
        raw += b"\0" * (-len(raw) % 8)
        out += struct.pack(">HHHHII", CA_PROTO_SEARCH, len(raw), DONT_REPLY,
                           CA_MINOR_VERSION, cid, cid) + raw
    return out


def found_cids(datagram):
    """The channel ids of the search replies in one UDP datagram."""
    cids, at = set(), 0
    while at + 16 <= len(datagram):
        cmd, size, _, _, _, p2 = struct.unpack(">HHHHII", datagram[at:at + 16])
        if cmd == CA_PROTO_SEARCH:
            cids.add(p2)
        at += 16 + size
    return cids


def wait_ready(ioc, port, names, timeout_s):
    """Until every name answers a UDP search on 127.0.0.1:port; False if the IOC died."""
    start = time.monotonic()
    missing = set(range(len(names)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    try:
        while missing:
            if ioc.poll() is not None:
                say(f"ioc exited before it was ready: {ioc.returncode}")
                return False
            if time.monotonic() - start > timeout_s:
                say(f"ioc not ready after {timeout_s} s: no search reply for "
                    f"{[names[i] for i in sorted(missing)]}")
                return False
            # Each name keeps its index as cid, whichever are still missing: a reply's cid
            # then says which name it answers.
            sock.sendto(search_packet([(i, names[i]) for i in sorted(missing)]),
                        ("127.0.0.1", port))
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline:
                try:
                    data, _ = sock.recvfrom(65536)
                except (socket.timeout, ConnectionRefusedError):
                    break
                missing -= found_cids(data)
    finally:
        sock.close()
    say(f"ioc ready after {time.monotonic() - start:.2f} s")
    return True


def stop(ioc, timeout_s):
    if ioc.poll() is not None:
        say(f"ioc had already exited: {ioc.returncode}")
        return
    ioc.send_signal(signal.SIGTERM)
    try:
        code = ioc.wait(timeout_s)
        say(f"ioc exit {code}")
    except subprocess.TimeoutExpired:
        ioc.kill()
        ioc.wait()
        say(f"ioc killed: still running {timeout_s} s after SIGTERM")


def main():
    cfg = json.loads(sys.argv[1])
    if cfg.get("netns"):
        run("ip", "link", "set", "lo", "up")
    if cfg.get("private_tmp"):
        private_tmp(cfg.get("keep", []))
    for path in cfg.get("dirs", []):
        os.makedirs(path, exist_ok=True)
    for link, target in cfg.get("symlinks", []):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(target, link)

    say(f"ioc: {' '.join(cfg['ioc'])}")
    ioc = subprocess.Popen(cfg["ioc"], stdin=subprocess.DEVNULL, stdout=sys.stderr,
                           stderr=sys.stderr)
    try:
        if not wait_ready(ioc, cfg["ca_port"], cfg["ready_pvs"], cfg["ready_timeout_s"]):
            return
        say(f"client: {' '.join(cfg['client'])}")
        try:
            code = subprocess.run(cfg["client"], stdin=subprocess.DEVNULL,
                                  stdout=sys.stdout, stderr=subprocess.STDOUT,
                                  timeout=cfg["client_timeout_s"]).returncode
            say(f"client exit {code}")
        except subprocess.TimeoutExpired:
            say(f"client killed: still running after {cfg['client_timeout_s']} s")
    finally:
        stop(ioc, cfg["stop_timeout_s"])


if __name__ == "__main__":
    main()
