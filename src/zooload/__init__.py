"""zooload: load pre-trained PyTorch models from anywhere, safely and fast.

>>> import zooload
>>> "load_url" in zooload.__all__
True
"""

from zooload import zoo
from zooload.architectures import register, registered_names
from zooload.errors import (
    ArchiveError,
    CacheError,
    CheckpointError,
    ConfigError,
    DownloadError,
    FormatError,
    HashMismatchError,
    IncompatibleStateDictError,
    IntegrityError,
    ManifestError,
    NotCachedError,
    SizeMismatchError,
    StateDictError,
    UnknownArchitectureError,
    UnsafeArchiveError,
    UnsafeCheckpointError,
    VerificationError,
    ZooloadError,
)
from zooload.inspection import CheckpointInfo, inspect
from zooload.loading import LoadReport, load_into
from zooload.manifest import Manifest
from zooload.pack import pack
from zooload.pipeline import LoadResult, fetch, load, load_state_dict, load_url

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "CacheError",
    "CheckpointError",
    "CheckpointInfo",
    "ConfigError",
    "DownloadError",
    "FormatError",
    "HashMismatchError",
    "IncompatibleStateDictError",
    "IntegrityError",
    "LoadReport",
    "LoadResult",
    "Manifest",
    "ManifestError",
    "NotCachedError",
    "SizeMismatchError",
    "StateDictError",
    "UnknownArchitectureError",
    "UnsafeArchiveError",
    "UnsafeCheckpointError",
    "VerificationError",
    "ZooloadError",
    "__version__",
    "fetch",
    "inspect",
    "load",
    "load_state_dict",
    "load_into",
    "load_url",
    "pack",
    "register",
    "registered_names",
    "zoo",
]
