"""zooload: load pre-trained PyTorch models from anywhere, safely and fast.

>>> import zooload
>>> "load_url" in zooload.__all__
True
"""

from zooload import zoo
from zooload.architectures import register, registered_names
from zooload.archive import ExtractionLimits
from zooload.cache_admin import (
    CacheEntry,
    PruneResult,
    cache_entries,
    cache_root,
    cache_size,
    prune_cache,
    remove_from_cache,
)
from zooload.cache_verification import CorruptBlob, verify_cache
from zooload.compare import StateDictDiff, diff_state_dicts
from zooload.conversion import convert
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
    UntrustedCodeError,
    VerificationError,
    ZooloadError,
)
from zooload.inspection import CheckpointInfo, inspect
from zooload.loading import LoadReport, load_into
from zooload.manifest import Manifest
from zooload.pack import pack
from zooload.pipeline import LoadResult, load, load_url
from zooload.retries import RetryPolicy
from zooload.retrieval import fetch, load_state_dict

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "CacheEntry",
    "CacheError",
    "CheckpointError",
    "CheckpointInfo",
    "ConfigError",
    "CorruptBlob",
    "DownloadError",
    "ExtractionLimits",
    "FormatError",
    "HashMismatchError",
    "IncompatibleStateDictError",
    "IntegrityError",
    "LoadReport",
    "LoadResult",
    "Manifest",
    "ManifestError",
    "NotCachedError",
    "PruneResult",
    "RetryPolicy",
    "SizeMismatchError",
    "StateDictDiff",
    "StateDictError",
    "UnknownArchitectureError",
    "UnsafeArchiveError",
    "UnsafeCheckpointError",
    "UntrustedCodeError",
    "VerificationError",
    "ZooloadError",
    "__version__",
    "cache_entries",
    "cache_root",
    "cache_size",
    "convert",
    "diff_state_dicts",
    "fetch",
    "inspect",
    "load",
    "load_state_dict",
    "load_into",
    "load_url",
    "pack",
    "prune_cache",
    "register",
    "registered_names",
    "remove_from_cache",
    "verify_cache",
    "zoo",
]
