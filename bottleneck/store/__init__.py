"""The HDF5 bottleneck cache: embeddings keyed by extractor fingerprint and image sha256.

Layout (see docs/architecture.md): `/extractors/<fp>/{keys,vectors}` grow batch by batch and are
flushed after each, so a killed run loses at most the batch in flight; `/datasets/<name>/` holds
the manifest of one folder; `/paths` remembers (path, size, mtime) → sha256 so that a rerun does
not re-read unchanged files.
"""

from ._cache import ASIDE, DEFAULT_CACHE, FORMAT, MANIFEST_FIELDS, PENDING, ManifestRow, Store
from ._disk import cache_lock, check_room, lock_file
from ._features import (
    Features,
    auto_extractions,
    fusion_parts,
    load_features,
    load_fused,
    load_views,
    plain_and_views,
    select_extraction,
    select_extractions,
    stack_views,
    with_views,
)
from ._maintenance import compact_cache, verify_cache
from ._projections import read_projection, write_projection
from ._rows import copy_rows, create_rows, readable_keys, view_key
from ._tables import read_table, write_table

__all__ = ["ASIDE", "DEFAULT_CACHE", "FORMAT", "MANIFEST_FIELDS", "PENDING", "Features", "ManifestRow", "Store", "auto_extractions", "fusion_parts", "load_fused", "select_extractions",
           "cache_lock", "check_room", "lock_file", "compact_cache", "copy_rows", "create_rows", "load_features", "load_views", "plain_and_views", "stack_views", "with_views",
           "read_projection", "read_table", "readable_keys", "select_extraction", "verify_cache", "view_key",
           "write_projection", "write_table"]
