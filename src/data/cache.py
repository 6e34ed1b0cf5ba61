"""Parquet files written atomically, with an optional JSON metadata record."""

import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"rltrade"


def write_parquet(df: pd.DataFrame, path: Path, metadata: dict | None = None) -> None:
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
        pq.write_table(table, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def read_parquet(path: Path) -> tuple[pd.DataFrame, dict]:
    """(frame, metadata record) of a file written by ``write_parquet``; raises if unreadable."""
    table = pq.read_table(path)
    record = (table.schema.metadata or {}).get(METADATA_KEY)
    return table.to_pandas(), json.loads(record) if record else {}
