"""Secrets come from files, or from systemd's $CREDENTIALS_DIRECTORY (LoadCredential=)."""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent.bounded import MAX_SECRET_BYTES, FileReadError, read_text_bounded
from edge_agent.errors import ConfigError


def read_secret(name_or_path: str) -> str:
    """The file's name is looked up in $CREDENTIALS_DIRECTORY first, then the path; the value is stripped.

    Config paths arrive already resolved against the config file's folder, so `password_file =
    "mqtt_password"` reaches here as `/etc/edge-agent/mqtt_password`: only its name is used in
    the credentials directory (systemd `LoadCredential=mqtt_password:...`).
    """
    p = Path(name_or_path)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    candidates = [Path(creds) / p.name] if creds else []
    candidates.append(p)
    for c in candidates:
        try:
            # a regular file of at most 64 KiB: a FIFO or /dev/zero named here must not hang or
            # fill the memory of paho's thread, which reads the password before every attempt
            return read_text_bounded(c, what="secret file", max_bytes=MAX_SECRET_BYTES).strip()
        except FileNotFoundError:
            continue
        except FileReadError as err:
            raise ConfigError([str(err)]) from None
        except OSError as err:
            raise ConfigError([f"cannot read secret file {c}: {err.strerror or err}"]) from None
    raise ConfigError([f"secret file not found: {name_or_path}"])
