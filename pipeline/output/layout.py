"""The extra output columns of a template job (carried input columns, typed response fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.records import short


@dataclass(frozen=True)
class Layout:
    """The extra output columns of a template job and their Arrow types."""

    carried: tuple[tuple[str, str, pa.DataType], ...] = ()  # (input column, output column, type)
    response: tuple[tuple[str, str, pa.DataType], ...] = ()  # (schema property, column, type)
    response_schema: dict[str, Any] | None = None
    explode: bool = False
    check_types: bool = False  # JSON-lines inputs: carried values checked against inferred types

    @property
    def schema(self) -> pa.Schema:
        from pipeline.schema import OUTPUT_SCHEMA

        extra = [pa.field("choice_index", pa.int32())] if self.explode else []
        if self.response_schema is not None:
            extra += [pa.field(col, t) for _, col, t in self.response] + [pa.field("parse_error", pa.string())]
        extra += [pa.field(col, t) for _, col, t in self.carried]
        return pa.schema(list(OUTPUT_SCHEMA) + extra)

    def carry(self, row: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
        out = {}
        for name, col, dtype in self.carried:
            value = row.get(name)
            if value is not None and self.check_types:
                try:
                    pa.scalar(value, type=dtype)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
                    warnings.append(f"carried column {short(name, 40)}: {short(value, 40)} does not fit its "
                                    f"type {dtype} (inferred from the first rows); written as null")
                    value = None
            out[col] = value
        return out
