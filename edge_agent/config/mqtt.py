"""`[mqtt]`: the broker link."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge_agent.config._base import Section
from edge_agent.config._types import HostStr, MqttStr, PathStr


class TlsConfig(Section):
    ca: PathStr | None = None
    cert: PathStr | None = None
    key: PathStr | None = None
    insecure: bool = Field(default=False, description="skip hostname verification (testing only)")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("mqtt.tls: cert and key must be given together")
        return self


class MqttConfig(Section):
    host: HostStr = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    transport: Literal["tcp", "websockets"] = "tcp"
    protocol: Literal["5", "3.1.1"] = "5"
    username: MqttStr | None = None
    password_file: PathStr | None = None
    tls: TlsConfig | None = None
    topic_prefix: str = "edge"
    results_qos: int = Field(default=0, ge=0, le=2)
    events_qos: int = Field(default=1, ge=0, le=2)
    persist_results: bool = False
    keepalive: int = Field(default=30, ge=5, le=3600)
    outbox_max_mb: float = Field(default=64.0, gt=0, le=65536)
    client_id: MqttStr | None = None
    allow_plaintext_password: bool = Field(
        default=False, description="send the password over a link without TLS (off: such a config is refused)"
    )
    max_incoming_kb: int = Field(default=256, ge=1, le=65536, description="larger incoming messages are rejected")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_number(cls, v: object) -> object:
        # TOML users write `protocol = 5`; accept the number as well as the string
        if v in (5, 5.0):
            return "5"
        if v in (3.1, 311, "311", "3.1", "v3.1.1"):
            return "3.1.1"
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or v.startswith("/") or v.endswith("/") or "+" in v or "#" in v or "//" in v or len(v) > 1024:
            raise ValueError(f"must be a topic without wildcards and without leading/trailing '/', got {v!r}")
        return v

    @model_validator(mode="after")
    def _credentials(self) -> MqttConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("mqtt.password_file: needs mqtt.username")
        if self.password_file is not None and self.tls is None and not self.allow_plaintext_password:
            raise ValueError(
                "mqtt.password_file: a password would cross the network in clear text: configure [mqtt.tls], "
                "or set mqtt.allow_plaintext_password = true for a trusted network"
            )
        return self
