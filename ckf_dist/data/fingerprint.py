"""The dataset fingerprint: a content hash of a table that does not depend on its row order.

Each row hashes to 64 bits (pandas' row hash over every column); the fingerprint combines the
row count, the sum of the row hashes modulo 2**64 and the column names. A table held in pieces
(blocks of users on different workers) is fingerprinted piece by piece and the pieces are merged
with :meth:`RowDigest.merge`, in any order, giving exactly the fingerprint of the whole table.
A changed, added or removed row changes the sum; duplicate rows add up rather than cancel.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class RowDigest:
    rows: int
    total: int
    """Sum of the row hashes mod 2**64."""
    columns: tuple[str, ...]

    @classmethod
    def of(cls, df) -> "RowDigest":
        import pandas as pd

        h = pd.util.hash_pandas_object(df, index=False).to_numpy(dtype=np.uint64)
        return cls(len(df), int(h.sum(dtype=np.uint64)) & _MASK, tuple(map(str, df.columns)))

    def merge(self, other: "RowDigest") -> "RowDigest":
        if other.rows and self.rows and other.columns != self.columns:
            raise ValueError(f"fingerprint pieces with different columns: {self.columns} vs {other.columns}")
        return RowDigest(self.rows + other.rows, (self.total + other.total) & _MASK, self.columns or other.columns)

    def hexdigest(self) -> str:
        h = hashlib.sha256(f"{self.rows}/{self.total}/".encode())
        h.update(",".join(self.columns).encode())
        return h.hexdigest()[:16]
