"""Synthesized sounds for the bundled audio classifier: tones, chirps, noise and pulses.

Pure NumPy, imported by ``make_models.py`` (training clips), ``verify_models.py`` (held-out
clips at the model's rate) and the tests (held-out clips at other rates, written as WAV
files and fed through the agent). ``clip(cls, seconds, rate, rng)`` draws one clip of a
class at any sample rate, so the same recipe yields 48 kHz training data and 44.1 kHz test
files. Every clip has a random gain and a faint noise floor (so two windows are never
bit-identical, as no real recording is), coloured and band-limited like the noise class.

* ``tone``: one steady sinusoid, 150 Hz to 8 kHz.
* ``chirp``: an exponential sweep, 2 to 8 octaves per second up or down, wrapping around
  inside 150 Hz to 12 kHz (so any 0.5 s window sweeps at least one octave).
* ``noise``: noise with a random spectral tilt and low-pass cutoff (4 kHz to half the rate).
* ``pulses``: tone bursts of 15 to 60 ms at 4 to 12 per second, 300 Hz to 6 kHz.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("tone", "chirp", "noise", "pulses")
RATE = 48000  # the model's sample rate
WINDOW_S = 0.5  # the model's window
WINDOW = int(RATE * WINDOW_S)


def _gain(rng: np.random.Generator) -> float:
    # peak between -26 dBFS and -1 dBFS
    return float(10.0 ** (rng.uniform(-26.0, -1.0) / 20.0))


def tone(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    f = np.exp(rng.uniform(np.log(150.0), np.log(8000.0)))
    t = np.arange(n) / rate
    return np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))


def chirp(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    lo, hi = np.log2(150.0), np.log2(12000.0)
    octaves_per_s = rng.uniform(2.0, 8.0) * rng.choice([-1.0, 1.0])
    span = hi - lo
    t = np.arange(n) / rate
    # log2 frequency follows a sawtooth inside [lo, hi]; phase is the running sum of frequency
    pos = np.mod(rng.uniform(0, span) + octaves_per_s * t, span)
    freq = 2.0 ** (lo + pos)
    phase = 2 * np.pi * np.cumsum(freq) / rate
    return np.sin(phase + rng.uniform(0, 2 * np.pi))


def noise(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.normal(0.0, 1.0, n)
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1.0 / rate)
    tilt = rng.uniform(-1.0, 0.5)  # 0 = white, -1 = pink-ish (power ~ 1/f^2), >0 = bright
    cutoff = rng.uniform(4000.0, rate / 2)
    shape = np.where(f > 0, (np.maximum(f, 20.0) / 1000.0) ** tilt, 0.0) * (f <= cutoff)
    out = np.fft.irfft(spec * shape, n)
    return out / (np.max(np.abs(out)) + 1e-12)


def pulses(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    f = np.exp(rng.uniform(np.log(300.0), np.log(6000.0)))
    per_s = rng.uniform(4.0, 12.0)
    length_s = rng.uniform(0.015, 0.06)
    t = np.arange(n) / rate
    phase_in_period = np.mod(t * per_s + rng.uniform(0, 1), 1.0) / per_s  # seconds into the period
    on = phase_in_period < length_s
    # raised-cosine envelope inside each burst, so bursts do not click
    env = np.where(on, 0.5 - 0.5 * np.cos(2 * np.pi * phase_in_period / length_s), 0.0)
    return env * np.sin(2 * np.pi * f * t)


MAKERS = {"tone": tone, "chirp": chirp, "noise": noise, "pulses": pulses}


def clip(cls: str, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of class `cls`, float64 in [-1, 1], `seconds` long at `rate` Hz."""
    n = round(seconds * rate)
    x = MAKERS[cls](n, rate, rng)
    x = x / (np.max(np.abs(x)) + 1e-12) * _gain(rng)
    # the floor is coloured and band-limited too, as in a recording made at a lower rate or
    # resampled: an empty top band must not be what tells noise from the other classes
    floor = float(np.max(np.abs(x))) * 10.0 ** (rng.uniform(-60.0, -35.0) / 20.0)
    return np.clip(x + floor * noise(n, rate, rng), -1.0, 1.0)


def dataset(per_class: int, seconds: float, rate: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` clips of every class, float32 [N, samples], and their class indices."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(per_class):
        for k, cls in enumerate(CLASSES):
            xs.append(clip(cls, seconds, rate, rng).astype(np.float32))
            ys.append(k)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)
