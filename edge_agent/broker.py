"""A local MQTT broker for the demo (and the tests): mosquitto when installed, else amqtt.

amqtt speaks MQTT 3.1.1 only, so a client of an amqtt broker must connect with 3.1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_answers("127.0.0.1", port, 0.2):
            return True
        time.sleep(0.05)
    return False


@dataclass
class LocalBroker:
    kind: str  # "mosquitto" or "amqtt"
    port: int
    protocol: str  # the MQTT version clients must speak: "5" or "3.1.1"
    _stop: Any = None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def start_mosquitto(port: int, *, timeout: float = 10.0) -> LocalBroker:
    exe = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)
    if exe is None:
        raise RuntimeError("mosquitto is not installed")
    tmp = tempfile.TemporaryDirectory(prefix="edge-agent-broker-")
    conf = Path(tmp.name) / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = (Path(tmp.name) / "mosquitto.log").open("wb")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)  # noqa: S603

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        tmp.cleanup()

    if not _wait_port(port, timeout):
        stop()
        raise RuntimeError(f"mosquitto did not start listening on 127.0.0.1:{port}")
    return LocalBroker("mosquitto", port, "5", stop)


def start_amqtt(port: int, *, timeout: float = 10.0) -> LocalBroker:
    from amqtt.broker import Broker  # noqa: PLC0415  (optional dependency)

    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            broker = Broker(config, loop=loop)
            await broker.start()  # returns once the listener is bound and listening
            holder["broker"] = broker

        try:
            loop.run_until_complete(main())
        except Exception as err:  # noqa: BLE001  (start_amqtt reports it, e.g. the port is in use)
            holder["error"] = err
            loop.close()
            return
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="amqtt-broker", daemon=True)
    thread.start()

    def stop() -> None:
        broker = holder.get("broker")
        if broker is not None:
            fut = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
            with contextlib.suppress(Exception):
                fut.result(5)
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    # no TCP probe of the port here: amqtt logs an ERROR for a connection that sends nothing
    if not started.wait(timeout):
        stop()
        raise RuntimeError(f"amqtt did not start listening on 127.0.0.1:{port}")
    if "error" in holder:
        thread.join(5)
        raise RuntimeError(f"amqtt cannot listen on 127.0.0.1:{port}: {holder['error']}")
    return LocalBroker("amqtt", port, "3.1.1", stop)


def start_local_broker(port: int) -> LocalBroker:
    """mosquitto when installed, else the embedded amqtt broker."""
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        return start_mosquitto(port)
    return start_amqtt(port)
