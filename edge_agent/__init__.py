"""edge-agent: TensorFlow Lite inference on Raspberry Pi and Coral with a NaN/Inf guard."""

__version__ = "0.1.0"
