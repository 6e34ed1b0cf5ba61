"""Frames on disk, written atomically, with an optional JSON metadata record.

The format follows the file's suffix: ``.parquet`` (compressed, portable: the OHLCV cache) or
``.arrow`` (Arrow IPC, uncompressed, read memory-mapped without a copy: the feature cache, where
a reload of a million bars x 60 columns must take a fraction of a second).
"""

import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

METADATA_KEY = b"rltrade"


def write_frame(df: pd.DataFrame, path: Path, metadata: dict | None = None) -> None:
    """Replace ``path`` with ``df`` via a temp file + rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df)
    if metadata is not None:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(metadata).encode()}
        )
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        if path.suffix == ".arrow":
            # one record batch: a reload maps each column whole (pyarrow copies columns that
            # span batches, and writes 64K-row batches by default)
            feather.write_feather(table, temporary, compression="uncompressed", chunksize=max(table.num_rows, 1))
        else:
            pq.write_table(table, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def read_frame(path: Path) -> tuple[pd.DataFrame, dict]:
    """(frame, metadata record) of a file written by ``write_frame``; raises if unreadable."""
    if path.suffix == ".arrow":
        table = feather.read_table(path, memory_map=True)
        frame = table.to_pandas(split_blocks=True)  # columns stay views of the mapped file
    else:
        table = pq.read_table(path)
        frame = table.to_pandas()
    record = (table.schema.metadata or {}).get(METADATA_KEY)
    return frame, json.loads(record) if record else {}
