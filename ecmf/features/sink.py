"""The feature store as a Ray Data sink: each write task's rows become one whole Parquet file.

Ray's own `write_parquet` writes in place, so a killed task leaves a truncated file that every
later read trips over; here a file is written under a hidden name and renamed when complete.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from ray.data import Datasink

from ecmf.features.store import part_name, write_part


class StoreSink(Datasink):
    """Writes `part-<run>-<task>-<uuid>.parquet` files of about `rows_per_file` rows (Ray
    bundles blocks up to that before a write task runs) into `store`."""

    def __init__(self, store: str | Path, run: str, rows_per_file: int = 256):
        self.store = Path(store)
        self.run = run
        self.rows_per_file = rows_per_file

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def on_write_start(self, schema=None) -> None:
        self.store.mkdir(parents=True, exist_ok=True)

    def write(self, blocks, ctx) -> int:
        tables = [pa.table(b) if not isinstance(b, pa.Table) else b for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return 0
        table = pa.concat_tables(tables)
        write_part(table, self.store / part_name(self.run, ctx.task_idx))
        return table.num_rows
