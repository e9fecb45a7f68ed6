"""Architectures that ship with zooload, registered under stable names."""

from zooload.zoo import silero_vad

__all__ = ["silero_vad"]
