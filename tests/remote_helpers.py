"""Helpers for the remote-update tests: signed documents, a publisher, an HTTP file server."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.broker import free_port
from edge_agent.remote.document import sign

KEY = b"0123456789abcdef-test-update-key"


def signed(version: int, config: dict[str, Any], key: bytes = KEY) -> dict[str, Any]:
    return {"version": version, "config": config, "sig": sign(key, config, version)}


def publish(port: int, topic: str, payload: bytes | dict[str, Any]) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, data, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    delay_per_chunk_s = 0.0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        # a slow server, when asked: the file trickles out in small chunks
        if not self.delay_per_chunk_s:
            super().copyfile(source, outputfile)
            return
        while chunk := source.read(4096):
            outputfile.write(chunk)
            outputfile.flush()
            time.sleep(self.delay_per_chunk_s)


@contextmanager
def http_server(root: Path, *, delay_per_chunk_s: float = 0.0) -> Iterator[str]:
    """Serves `root` on a free loopback port; yields the base URL."""
    handler = type("Handler", (_QuietHandler,), {"delay_per_chunk_s": delay_per_chunk_s})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
