"""The command handler: `P/D/cmd/<name>` requests and config updates from the inbox, served
between two frames through a dispatch table. Every command is answered exactly once on
`cmd/result` (with its `id` when it had one); a snapshot or a mask asked for is answered when
the next frame or result gives it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2

from edge_agent.commands import COMMANDS, BadCommandIdError, CommandId, Request, command_id
from edge_agent.core.config import ConfigController
from edge_agent.core.models import ModelSupervisor
from edge_agent.core.publisher import Publisher
from edge_agent.core.sources import SourceSupervisor
from edge_agent.errors import ModelError
from edge_agent.pipeline import Fault, Inference
from edge_agent.snapshot import encode_within
from edge_agent.sources.base import Frame

Answer = Callable[[bool, str], None]


class CommandHandler:
    def __init__(
        self,
        publisher: Publisher,
        models: ModelSupervisor,
        config: ConfigController,
        sources: SourceSupervisor,
        *,
        on_paused: Callable[[bool], None],
    ) -> None:
        self.publisher = publisher
        self.models = models
        self.config = config
        self.sources = sources
        self._on_paused = on_paused
        self.paused = False
        # a snapshot is taken from the next frame while the source still lends it (frames are
        # not copied per frame: a camera's buffer may be gone once released); the ids of the
        # commands waiting for it, each answered by the same snapshot
        self.snapshot_wanted: list[CommandId | None] = []
        self.mask_wanted: list[CommandId | None] = []  # segmentation: the next result's mask as PNG
        self._table: dict[str, Callable[[Answer, CommandId | None], None]] = {
            "pause": self._pause,
            "resume": self._resume,
            "selftest": self._selftest,
            "reload": self._reload,
            "mask": self._mask,
            "snapshot": self._snapshot,
        }
        assert set(self._table) == set(COMMANDS)

    def serve(self, req: Request) -> None:
        if req.kind == "reject":
            if "/config/" in req.topic:
                self.publisher.reject_update(None, req.reason, "document")  # raises config_rejected
                return
            self.publisher.answer_cmd(req.topic.rsplit("/", 1)[-1], False, f"rejected: {req.reason}")
            self.publisher.raise_event(
                "message_rejected", "warning", f"{req.topic}: {req.reason}", {"topic": req.topic}
            )
            return
        if req.kind == "config":
            self.config.consider_update(req.payload)
            return
        self.command(req.name, req.payload)

    def command(self, name: str, args: Any) -> None:
        try:
            cid = command_id(args)
        except BadCommandIdError as err:
            self.publisher.answer_cmd(name, False, str(err))
            return

        def answer(ok: bool, message: str) -> None:
            self.publisher.answer_cmd(name, ok, message, (cid,))

        handler = self._table.get(name)
        if handler is None:
            answer(False, f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
            return
        handler(answer, cid)

    def _set_paused(self, paused: bool) -> None:
        if paused != self.paused:
            self.paused = paused
            self._on_paused(paused)

    def _pause(self, answer: Answer, _cid: CommandId | None) -> None:
        self._set_paused(True)
        answer(True, "inference paused")
        self.cancel_pending("inference was paused before the next frame")

    def cancel_pending(self, why: str) -> None:
        """Snapshots and masks asked for, which no frame will answer now (paused, no frames, the
        stop): answered so, since every command gets exactly one answer."""
        for name, ids in (("snapshot", self.snapshot_wanted), ("mask", self.mask_wanted)):
            if ids:
                self.publisher.answer_cmd(name, False, why, list(ids))
                ids.clear()

    def _resume(self, answer: Answer, _cid: CommandId | None) -> None:
        self._set_paused(False)
        answer(True, "inference resumed")

    def _selftest(self, answer: Answer, _cid: CommandId | None) -> None:
        pipeline = self.models.pipeline
        if pipeline is None:
            answer(False, "no model loaded")
            return
        try:
            outcome = pipeline.selftest()
        except ModelError as err:
            answer(False, str(err))
            return
        if isinstance(outcome, Inference):
            answer(True, "self-test passed the guard")
        elif isinstance(outcome, Fault):
            answer(False, f"self-test failed: {outcome.fault.kind}: {outcome.fault.message}")
        else:
            answer(False, f"self-test skipped: {outcome.message}")

    def _reload(self, answer: Answer, _cid: CommandId | None) -> None:
        # the same path as SIGHUP: the config file and the model again, the running ones kept on failure
        self.config.reload("cmd/reload", answer)

    def _flowing(self) -> bool:
        return not self.paused and self.sources.flowing and self.models.pipeline is not None

    def _mask(self, answer: Answer, cid: CommandId | None) -> None:
        p = self.models.pipeline
        if p is None or p.segmenter is None:
            answer(False, "the model is not a segmentation model (model.task)")
        elif not self._flowing():
            answer(False, "no frames are flowing (paused, finished or degraded)")
        else:
            self.mask_wanted.append(cid)  # answered by `publish_mask` after the next result

    def _snapshot(self, answer: Answer, cid: CommandId | None) -> None:
        if not self._flowing():
            answer(False, "no frames are flowing (paused, finished or degraded)")
            return
        self.snapshot_wanted.append(cid)  # answered by `take_snapshot` on the next frame

    # ---- answered by a frame ----------------------------------------------------------------
    def take_snapshot(self, frame: Frame, max_kb: int) -> None:
        ids, self.snapshot_wanted = self.snapshot_wanted, []
        answer = self.publisher.answer_cmd
        if frame.pixels is None:
            answer("snapshot", False, "the source delivers sensor rows, not images", ids)
            return
        pixels = frame.pixels if frame.order != "rgb" else cv2.cvtColor(frame.pixels, cv2.COLOR_RGB2BGR)
        limit = max_kb * 1024
        shot = encode_within(pixels, limit)
        if shot is None:
            answer("snapshot", False, f"the frame does not fit service.snapshot_max_kb ({limit} bytes)", ids)
            return
        self.publisher.publish_bytes("snapshot", shot.jpeg)
        answer(
            "snapshot",
            True,
            "snapshot published",
            ids,
            bytes=len(shot.jpeg),
            width=shot.width,
            height=shot.height,
            quality=shot.quality,
            frame_seq=frame.seq,
        )

    def publish_mask(self, frame: Frame) -> None:
        """The mask of the result just published, as PNG on P/D/mask (see postprocess/segmentation.py)."""
        ids, self.mask_wanted = self.mask_wanted, []
        answer = self.publisher.answer_cmd
        p = self.models.pipeline
        seg = p.segmenter if p is not None else None
        if seg is None:
            answer("mask", False, "the model is not a segmentation model (model.task)", ids)
            return
        try:
            png, width, height = seg.mask_png()
        except ValueError as err:
            answer("mask", False, str(err), ids)
            return
        self.publisher.publish_bytes("mask", png)
        answer("mask", True, "mask published", ids, bytes=len(png), width=width, height=height, frame_seq=frame.seq)
