"""Run tickit (`python -m tickit` with the same arguments) with its ZeroMQ PUSH sockets bound
only, as a DCU's are.

tickit 0.4's ZeroMqPushIo makes its socket with aiozmq.create_zmq_stream(zmq.PUSH,
connect=addr, bind=addr): the socket also connects to its own bound address. That PUSH-PUSH
connection never completes its handshake, but libzmq may keep its pipe and round-robin
messages into it, so some messages (often the first, the series' start) are never delivered
to any consumer, at random. Binding only removes that, and changes nothing else.
"""

import sys

import aiozmq
import zmq
from tickit.adapters.io import zeromq_push_io


async def bind_only(host: str, port: int) -> aiozmq.ZmqStream:
    return await aiozmq.create_zmq_stream(zmq.PUSH, bind=f"tcp://{host}:{port}")


defaults = list(zeromq_push_io.ZeroMqPushIo.__init__.__defaults__)
assert defaults[-1] is zeromq_push_io.create_zmq_push_socket, defaults
defaults[-1] = bind_only
zeromq_push_io.ZeroMqPushIo.__init__.__defaults__ = tuple(defaults)
zeromq_push_io.create_zmq_push_socket = bind_only

from tickit.cli import main  # noqa: E402  (after the patch, as tickit reads it at import)

sys.argv = ["tickit"] + sys.argv[1:]
main()
