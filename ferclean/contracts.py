"""Data contracts: one declarative YAML file per table in the `data_contracts` package.

A contract lists columns (Arrow type, nullability, allowed values, numeric range), the primary
key, and whether extra columns are allowed. :func:`validate` is applied on every write by
:mod:`ferclean.store`; it casts to the declared types and raises :class:`ContractViolation` with a
message naming the table, column and offending values.

Type names: string, bool, int8/16/32/64, float32/64, binary, timestamp (UTC, microseconds),
json (a string column holding JSON text), list<T> and fixed lists list<T>[n].
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml


class ContractViolation(ValueError):
    """A table does not satisfy its data contract."""


_SCALARS: dict[str, pa.DataType] = {
    "string": pa.string(),
    "json": pa.string(),
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "binary": pa.binary(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_LIST_RE = re.compile(r"^list<(\w+)>(?:\[(\d+)\])?$")


def arrow_type(name: str) -> pa.DataType:
    """Arrow type for a contract type name (see module docstring)."""
    name = name.strip()
    if name in _SCALARS:
        return _SCALARS[name]
    m = _LIST_RE.match(name)
    if m:
        inner = _SCALARS[m.group(1)]
        return pa.list_(inner, int(m.group(2))) if m.group(2) else pa.list_(inner)
    raise ValueError(f"unknown contract type {name!r}")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True
    allowed: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    description: str = ""

    @property
    def arrow(self) -> pa.DataType:
        return arrow_type(self.type)


@dataclass(frozen=True)
class Contract:
    table: str
    description: str
    primary_key: tuple[str, ...]
    columns: tuple[Column, ...]
    extra_columns: bool = False
    mode: str = "replace"  # replace: a stage's output replaces the table; append: history kept
    _by_name: dict[str, Column] = field(default_factory=dict, compare=False, repr=False)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow, nullable=c.nullable) for c in self.columns])

    def empty(self) -> pa.Table:
        return self.schema().empty_table()


def parse_contract(doc: dict[str, Any]) -> Contract:
    """Build a Contract from a parsed YAML mapping, checking its own consistency."""
    cols = []
    for c in doc["columns"]:
        allowed = c.get("allowed")
        col = Column(
            name=c["name"],
            type=c["type"],
            nullable=bool(c.get("nullable", True)),
            allowed=tuple(allowed) if allowed is not None else None,
            min=c.get("min"),
            max=c.get("max"),
            description=c.get("description", ""),
        )
        col.arrow  # noqa: B018  (raises on an unknown type)
        cols.append(col)
    names = [c.name for c in cols]
    if len(set(names)) != len(names):
        raise ValueError(f"contract {doc['table']}: duplicate column names")
    pk = tuple(doc.get("primary_key", []))
    for k in pk:
        if k not in names:
            raise ValueError(f"contract {doc['table']}: key column {k!r} is not declared")
    mode = doc.get("mode", "replace")
    if mode not in ("replace", "append"):
        raise ValueError(f"contract {doc['table']}: mode must be replace or append")
    return Contract(
        table=doc["table"],
        description=doc.get("description", ""),
        primary_key=pk,
        columns=tuple(cols),
        extra_columns=bool(doc.get("extra_columns", False)),
        mode=mode,
    )


@lru_cache(maxsize=None)
def load_contract(table: str) -> Contract:
    """Load `data_contracts/<table>.yaml`."""
    path = resources.files("data_contracts").joinpath(f"{table}.yaml")
    if not path.is_file():
        raise KeyError(f"no data contract for table {table!r}")
    return parse_contract(yaml.safe_load(path.read_text()))


def contract_tables() -> list[str]:
    """Names of all tables that have a contract."""
    return sorted(
        p.name[: -len(".yaml")]
        for p in resources.files("data_contracts").iterdir()
        if p.name.endswith(".yaml")
    )


def _fail(contract: Contract, msg: str) -> None:
    raise ContractViolation(f"table {contract.table!r}: {msg}")


def _sample(values: list[Any], n: int = 5) -> str:
    return ", ".join(repr(v) for v in values[:n]) + (" ..." if len(values) > n else "")


def validate(table: pa.Table, contract: Contract) -> pa.Table:
    """Check `table` against `contract` and return it cast to the contract's types.

    Declared columns come first in contract order; extra columns (when allowed) follow.
    Raises ContractViolation on a missing column, an undeclared column (when extras are not
    allowed), a failed cast, a null in a non-nullable column, a value outside `allowed` or
    [min, max], invalid JSON in a json column, or a duplicated primary key.
    """
    present = set(table.column_names)
    missing = [c.name for c in contract.columns if c.name not in present]
    if missing:
        _fail(contract, f"missing columns {missing}")
    extra = [n for n in table.column_names if n not in set(contract.names)]
    if extra and not contract.extra_columns:
        _fail(contract, f"undeclared columns {extra}")

    arrays, fields = [], []
    for col in contract.columns:
        arr = table.column(col.name)
        try:
            arr = arr.cast(col.arrow) if arr.type != col.arrow else arr
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            _fail(contract, f"column {col.name!r} cannot be read as {col.type}: {exc}")
        nulls = arr.null_count
        if nulls and not col.nullable:
            _fail(contract, f"column {col.name!r} has {nulls} nulls but is not nullable")
        if col.allowed is not None and len(arr):
            ok = pc.or_(pc.is_null(arr), pc.is_in(arr, value_set=pa.array(col.allowed, col.arrow)))
            bad = pc.filter(arr, pc.invert(ok))
            if len(bad):
                _fail(contract, f"column {col.name!r} has values outside {list(col.allowed)}: "
                      f"{_sample(pc.unique(bad).to_pylist())}")
        if (col.min is not None or col.max is not None) and len(arr):
            flat = pc.list_flatten(arr) if pa.types.is_list(col.arrow) or pa.types.is_fixed_size_list(col.arrow) else arr
            if len(flat) - flat.null_count:
                mm = pc.min_max(flat)
                lo, hi = mm["min"].as_py(), mm["max"].as_py()
                if col.min is not None and lo is not None and lo < col.min:
                    _fail(contract, f"column {col.name!r} has {lo} below its minimum {col.min}")
                if col.max is not None and hi is not None and hi > col.max:
                    _fail(contract, f"column {col.name!r} has {hi} above its maximum {col.max}")
        if col.type == "json":
            for v in arr.to_pylist():
                if v is not None:
                    try:
                        json.loads(v)
                    except json.JSONDecodeError:
                        _fail(contract, f"column {col.name!r} holds invalid JSON: {v[:80]!r}")
        arrays.append(arr)
        fields.append(pa.field(col.name, col.arrow, nullable=col.nullable))
    for name in extra:
        arrays.append(table.column(name))
        fields.append(table.schema.field(name))
    out = pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    if contract.primary_key and out.num_rows:
        keys = out.select(list(contract.primary_key))
        n_unique = keys.group_by(list(contract.primary_key)).aggregate([]).num_rows
        if n_unique != out.num_rows:
            dup = (
                keys.group_by(list(contract.primary_key))
                .aggregate([([], "count_all")])
                .filter(pc.greater(pc.field("count_all"), 1))
                .slice(0, 5)
                .to_pylist()
            )
            _fail(contract, f"primary key {list(contract.primary_key)} is not unique, e.g. {dup}")
    return out
