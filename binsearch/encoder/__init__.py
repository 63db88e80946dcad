"""Sentence encoders, loaded offline, and their precision paths and compression."""

from binsearch.encoder.model import DEFAULT_MODEL, ONNX_MAX_TEXTS, Encoder, ModelError

__all__ = ["DEFAULT_MODEL", "ONNX_MAX_TEXTS", "Encoder", "ModelError"]
