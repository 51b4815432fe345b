"""`[model]`: which model, which interpreter, which accelerator."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge_agent.config._base import Section
from edge_agent.config._types import PathStr

InterpreterName = Literal["auto", "ai-edge-litert", "tflite-runtime", "tensorflow"]
Task = Literal["classification", "detection", "pose", "segmentation", "regression", "raw"]
_EDGETPU_DEVICE = re.compile(r"^(usb|pci)(:\d+)?$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class ModelConfig(Section):
    path: PathStr
    labels: PathStr | None = None
    interpreter: InterpreterName = "auto"
    task: Task = "classification"
    threads: int | None = Field(default=None, ge=1, le=64, description="default: the number of CPU cores")
    delegate: Literal["cpu", "edgetpu"] = "cpu"
    edgetpu_device: str | None = None
    fallback_path: PathStr | None = None
    on_delegate_error: Literal["fallback", "fail"] = "fallback"
    sha256: str | None = None
    retry_interval_s: float = Field(default=10.0, gt=0, le=3600, description="retry a missing/broken model this often")
    isolation: Literal["inline", "process"] = Field(
        default="inline", description='"process": run the interpreter in a child process that may crash or hang'
    )
    invoke_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description='with isolation = "process": a longer invoke() is a hang'
    )
    overlap: bool = Field(
        default=True, description="prepare the next frame and publish the last result while invoke() runs"
    )
    delegate_lost_after: int = Field(
        default=3, ge=1, le=1000, description="consecutive Edge TPU failures before switching to the CPU model"
    )
    edgetpu_retry_s: float = Field(
        default=300.0, ge=1, le=86400, description="while on the CPU model, try the Edge TPU again this often"
    )

    @field_validator("edgetpu_device")
    @classmethod
    def _device_form(cls, v: str | None) -> str | None:
        if v is not None and not _EDGETPU_DEVICE.match(v):
            raise ValueError(f"must be 'usb', 'usb:N', 'pci' or 'pci:N', got {v!r}")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha_form(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256.match(v):
            raise ValueError("must be 64 hexadecimal characters")
        return v.lower() if v else v

    @model_validator(mode="after")
    def _delegate_rules(self) -> ModelConfig:
        if self.delegate == "cpu" and self.edgetpu_device is not None:
            raise ValueError("model.edgetpu_device: only meaningful with model.delegate = 'edgetpu'")
        return self
