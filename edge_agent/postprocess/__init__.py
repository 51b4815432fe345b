"""Decoders that turn output tensors into the result fields of SPEC.md."""
