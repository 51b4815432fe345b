"""`synthetic`: generated frames, for demos, soak runs and benchmarks without a camera."""

from __future__ import annotations

import numpy as np

from edge_agent.config.source import SyntheticOptions
from edge_agent.sources.base import Frame, SlotPool, SourceProblem, Stamp, frame_from_pixels


class SyntheticSource:
    def __init__(self, opts: SyntheticOptions) -> None:
        self.name = f"synthetic:{opts.pattern}:{opts.width}x{opts.height}"
        self._pattern = opts.pattern
        self._rng = np.random.default_rng(opts.seed)
        # preallocated slots: a frame handed out stays intact until it is released
        self._slots = SlotPool((opts.height, opts.width, 3))
        self._stamp = Stamp()
        self._n = 0
        size = opts.height * opts.width * 3
        self._pool = (
            self._rng.integers(0, 256, size=2 * size, dtype=np.uint8)
            if opts.pattern == "noise"
            else np.empty(0, np.uint8)
        )

    def _fill(self, buf: np.ndarray) -> None:
        _, w, _ = buf.shape
        if self._pattern == "noise":
            # a window into a noise pool generated once: every frame differs, none allocates
            n = buf.size
            start = int(self._rng.integers(0, self._pool.size - n + 1))
            np.copyto(buf.reshape(-1), self._pool[start : start + n])
        elif self._pattern == "gradient":
            shift = self._n % 256
            buf[:] = ((np.arange(w, dtype=np.int64) * 256 // max(w, 1) + shift) % 256).astype(np.uint8)[None, :, None]
        else:  # bars: vertical color bars that move one bar per frame
            colors = np.array(
                [
                    [255, 255, 255],
                    [0, 255, 255],
                    [255, 255, 0],
                    [0, 255, 0],
                    [255, 0, 255],
                    [0, 0, 255],
                    [255, 0, 0],
                    [0, 0, 0],
                ],
                dtype=np.uint8,
            )
            bar = max(w // 8, 1)
            for i in range(8):
                buf[:, i * bar : (i + 1) * bar] = colors[(i + self._n) % 8]

    def read(self) -> Frame | SourceProblem | None:
        buf = self._slots.acquire()
        self._fill(buf)
        self._n += 1
        return frame_from_pixels(self._stamp, f"synthetic#{self._n}", buf, "bgr")

    def release(self, frame: Frame) -> None:
        self._slots.give_back(frame.pixels)

    def close(self) -> None:
        """Nothing to close: the slots go with the source."""
