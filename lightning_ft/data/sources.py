"""Reading records (one dict per example) from files, save_to_disk folders, hub datasets or {label: file} mappings.

Every record keeps its 1-based line or row number, so that an error can point at the exact spot in the user's data.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import hashlib
import io
import json
import os
import re
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from lightning_ft.errors import UserError, first_line

NumberedRecord = tuple[int, dict]  # (1-based line or row number in the source, the example)
Source = str | dict[str, str]  # a file, a folder or a hub dataset name; or {label: file}: one label per file

TYPES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".txt")
DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {".gz": gzip.decompress, ".bz2": bz2.decompress}
SIGNATURES = {".gz": b"\x1f\x8b", ".bz2": b"BZh", ".parquet": b"PAR1"}
SUPPORTED = (
    "supported: .jsonl, .json, .csv, .tsv, .parquet, .txt, each optionally .gz or .bz2; "
    "a folder saved with datasets' save_to_disk; a hub dataset name"
)
FIX_ENCODING = "fix the file or set --data.encoding_errors replace"
HUB_NAME = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")
JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def check_data_source(source: Source, flag: str) -> None:
    """Cheap early check, before any model loads: every path exists and has a readable type, or the string is
    shaped like a hub dataset name. Reads at most a file's first bytes (its signature), never whole files."""
    for label, name, path in _entries(source, flag):
        if path is None:
            continue  # a hub dataset: only loading it can tell whether it is there
        if path.is_dir():
            _check_folder(path, f"{flag} {name}")
        else:
            compression, kind = _file_type(path, f"{flag} {name}", in_mapping=label is not None)
            _check_signature(path, f"{flag} {name}", compression or kind)


def read_records(
    source: Source,
    flag: str,
    *,
    encoding_errors: Literal["strict", "replace"] = "strict",
    label_field: str = "label",
    text_field: str = "text",
    split: str = "train",
) -> list[NumberedRecord]:
    """All records of the source. `flag` (e.g. "--data.train_path") is used in error messages.

    Text-based files are parsed here (not by `datasets`) so that errors can name the file's line.
    """
    if encoding_errors not in ("strict", "replace"):
        raise UserError(f"--data.encoding_errors {encoding_errors}: expected strict or replace")
    records: list[NumberedRecord] = []
    for label, name, path in _entries(source, flag):
        if path is None:
            part = _read_hub(name, flag, split)
        elif path.is_dir():
            part = _read_folder(path, name, flag, split)
        else:
            part = _read_file(path, name, flag, label is not None, encoding_errors, text_field)
        if label is not None:
            _set_label(part, label, label_field, name)
        records += part
    return records


def fingerprint(source: Source, *, split: str = "train") -> str:
    """A hex digest that changes when the data changes, for the tokenisation cache key: sha256 of every file's bytes
    (folders: all files by relative path), with mapping labels and file types; a hub dataset: its name + split."""
    digest = hashlib.sha256()
    for label, name, path in _entries(source, ""):
        if path is None:
            _frame(digest, ["hub", label, name, split])
        elif path.is_dir():
            dict_split = split if (path / "dataset_dict.json").is_file() else None
            _frame(digest, ["folder", label, dict_split])
            for file in sorted(_folder_files(path), key=lambda f: f.relative_to(path).as_posix()):
                _frame(digest, [file.relative_to(path).as_posix(), file.stat().st_size])
                _hash_file(digest, file)
        else:
            compression, kind = _file_type(path, name, in_mapping=True)
            _frame(digest, ["file", label, kind, compression])
            _hash_file(digest, path)
    return digest.hexdigest()


def _entries(source: Source, flag: str) -> list[tuple[str | None, str, Path | None]]:
    """(label or None, the name as the user wrote it, local path or None for a hub dataset) for each part of a source.

    Mapping values must be local files or folders: a label per hub dataset is not something anyone asked for.
    """
    if not isinstance(source, dict):
        name = os.fspath(source)
        return [(None, name, _locate(name, flag))]
    if not source:
        raise UserError(f"{flag}: an empty mapping; give {{label: file}} with at least one file")
    entries = []
    for label, name in source.items():
        if not isinstance(name, str) or not name:
            raise UserError(f"{flag}: the mapping's value for label {label!r} must be a file path, got {name!r}")
        path = Path(name).expanduser()
        if not path.exists():
            raise UserError(f"{_where(flag, name)}: no such file")
        entries.append((str(label), name, path))
    return entries


def _locate(name: str, flag: str) -> Path | None:
    """The existing local path a string names, or None when it is shaped like a hub dataset name ("name" or
    "org/name"); a path-shaped string that names nothing is a plain "no such file"."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    path_shaped = name.startswith(("/", "./", "../", "~")) or _has_data_suffix(path)
    if path_shaped or not HUB_NAME.fullmatch(name):
        raise UserError(f"{_where(flag, name)}: no such file")
    return None


def _has_data_suffix(path: Path) -> bool:
    """Whether the name ends like a data file (.jsonl, .csv.gz, ...); hub names may have dots ("OpenHermes-2.5")."""
    suffix = path.suffix.lower()
    return suffix in DECOMPRESS or suffix in TYPES


def _file_type(path: Path, where: str, in_mapping: bool) -> tuple[str | None, str]:
    """(compression suffix or None, type suffix) from the file name. Inside a {label: file} mapping an unknown type
    is plain text, since one-label-per-file corpora use names like rt-polarity.pos."""
    suffix = path.suffix.lower()
    compression = suffix if suffix in DECOMPRESS else None
    kind = Path(path.stem).suffix.lower() if compression else suffix
    if kind == ".ndjson":
        kind = ".jsonl"
    if kind not in TYPES:
        if not in_mapping:
            raise UserError(f"{where}: unsupported file type ({SUPPORTED})")
        kind = ".txt"
    return compression, kind


def _check_signature(path: Path, where: str, kind: str) -> None:
    """Opens the file and compares its first bytes with the type's signature, so a mislabeled file fails early."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        raise UserError(f"{where}: cannot read ({err.strerror or err})") from err
    signature = SIGNATURES.get(kind)
    if signature and not head.startswith(signature):
        raise UserError(f"{where}: not a {kind} file (it does not start with the {kind} signature)")


def _check_folder(path: Path, where: str) -> None:
    """A folder is only data if `save_to_disk` wrote it: other folders have no defined record order or schema."""
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise UserError(
            f"{where}: a folder, but not one saved with datasets' save_to_disk "
            f"(no dataset_dict.json or state.json in it)"
        )


def _read_file(
    path: Path, name: str, flag: str, in_mapping: bool, errors: str, text_field: str
) -> list[NumberedRecord]:
    """Reads, decompresses and parses one file; the type comes from the suffix before any .gz / .bz2."""
    compression, kind = _file_type(path, _where(flag, name), in_mapping)
    data = _read_bytes(path, _where(flag, name), compression)
    if kind == ".parquet":
        return _parse_parquet(data, name)
    text = _decode(data, name, errors)
    if kind == ".jsonl":
        return _parse_jsonl(text, name)
    if kind == ".json":
        return _parse_json(text, name)
    if kind in (".csv", ".tsv"):
        return _parse_csv(text, name, "\t" if kind == ".tsv" else ",")
    return _parse_lines(text, name, text_field)


def read_jsonl(path: Path) -> list[NumberedRecord]:
    """Every object of a JSON lines file (optionally .gz or .bz2) with its line number, for the files that are not
    training data (benchmark items, generations to rate); errors name the file and line as for training data."""
    path = Path(path)
    data = _read_bytes(path, str(path), path.suffix if path.suffix in DECOMPRESS else None)
    return _parse_jsonl(_decode(data, str(path), "strict", fix="save it as UTF-8"), str(path))


def _read_bytes(path: Path, where: str, compression: str | None) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{where}: cannot read ({err.strerror or err})") from err
    if not compression:
        return data
    try:
        return DECOMPRESS[compression](data)
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise UserError(f"{where}: cannot decompress the {compression} file ({first_line(err)})") from err


def _decode(
    data: bytes, name: str, errors: str, fix: str = "fix the file or set --data.encoding_errors replace"
) -> str:
    """UTF-8 text without a leading BOM. Invalid bytes stop the read at their line and column, or with
    errors="replace" become U+FFFD and a warning counts the lines affected: nothing changes silently."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if errors == "strict":
            line = data.count(b"\n", 0, err.start) + 1
            column = len(data[data.rfind(b"\n", 0, err.start) + 1 : err.start].decode("utf-8")) + 1
            raise UserError(
                f"{name}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at column {column}); {fix}"
            ) from err
    bad = [number for number, line in enumerate(data.split(b"\n"), start=1) if not _is_utf8(line)]
    warnings.warn(
        f"{name}: {len(bad)} line(s) not valid UTF-8 (first: line {bad[0]}); "
        f"their invalid bytes were replaced with U+FFFD",
        stacklevel=4,
    )
    return data.decode("utf-8", errors="replace")


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_jsonl(text: str, name: str) -> list[NumberedRecord]:
    """One JSON object per line; blank lines are skipped but still counted, so numbers match the editor's."""
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{name}:{number}: invalid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(item, dict):
            raise UserError(f"{name}:{number}: expected a JSON object, got {_json_type(item)}")
        records.append((number, item))
    return records


def _parse_json(text: str, name: str) -> list[NumberedRecord]:
    """A JSON array of objects; a record's number is its 1-based index in the array (items have no line)."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        hint = "; one object per line is JSON lines: name the file .jsonl" if err.msg == "Extra data" else ""
        raise UserError(f"{name}:{err.lineno}: invalid JSON ({err.msg}){hint}") from err
    if not isinstance(items, list):
        raise UserError(f"{name}: expected a JSON array of objects, got {_json_type(items)}")
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise UserError(f"{name}: item {index}: expected a JSON object, got {_json_type(item)}")
    return list(enumerate(items, start=1))


def _json_type(value: object) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def _parse_csv(text: str, name: str, delimiter: str) -> list[NumberedRecord]:
    """Header row, then one record per row, numbered by the line the row starts on (quoted cells may span lines).
    Strict parsing and equal cell counts: a stray quote or delimiter must not shift values into other fields."""
    reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=delimiter, strict=True)
    records, header, end = [], None, 0
    limit = csv.field_size_limit(2**31 - 1)  # long documents exceed the default 128 KiB per cell
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header = _csv_header(row, name, start)
            elif len(row) != len(header):
                raise UserError(f"{name}:{start}: {len(row)} cells, but the header has {len(header)} fields")
            else:
                records.append((start, dict(zip(header, row, strict=True))))
    except csv.Error as err:
        raise UserError(f"{name}:{reader.line_num}: invalid CSV ({err})") from err
    finally:
        csv.field_size_limit(limit)
    return records


def _csv_header(row: list[str], name: str, line: int) -> list[str]:
    """The field names; a repeated one would silently drop a column, so it is an error."""
    seen = set()
    for field in row:
        if field in seen:
            raise UserError(f"{name}:{line}: the header repeats the field {field!r}")
        seen.add(field)
    return row


def _parse_lines(text: str, name: str, text_field: str) -> list[NumberedRecord]:
    """One record {text_field: line} per non-blank line, line ending stripped (trailing spaces are data)."""
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            records.append((number, {text_field: line}))
    return records


def _parse_parquet(data: bytes, name: str) -> list[NumberedRecord]:
    """Rows in file order, numbered from 1. pyarrow reads the bytes directly (also decompressed .parquet.gz);
    `Dataset.from_parquet` would first copy every new file into the datasets cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{name}: not a readable parquet file ({first_line(err)})") from err
    return list(enumerate(table.to_pylist(), start=1))


def _read_folder(path: Path, name: str, flag: str, split: str) -> list[NumberedRecord]:
    """A Dataset or DatasetDict saved with `save_to_disk`; of a DatasetDict, the `split` asked for."""
    import datasets

    _check_folder(path, _where(flag, name))
    try:
        data = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"{_where(flag, name)}: cannot load the saved dataset ({first_line(err)})") from err
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise UserError(
                f"{_where(flag, name)}: no split {split!r} in this DatasetDict (splits there: {', '.join(data)})"
            )
        data = data[split]
    return list(enumerate(data.to_list(), start=1))


def _read_hub(name: str, flag: str, split: str) -> list[NumberedRecord]:
    """A dataset from the Hugging Face hub (or the local hub cache when offline)."""
    import datasets

    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as err:  # offline, unreachable, not found, gated, no such split: all end the same way
        raise UserError(
            f"{_where(flag, name)}: not a local file or folder, and the hub dataset could not be loaded "
            f"({first_line(err)}); offline, point to a local file"
        ) from err
    return list(enumerate(data.to_list(), start=1))


def _set_label(records: list[NumberedRecord], label: str, field: str, name: str) -> None:
    """Gives every record of a file its mapping label; a record that already says otherwise is an error."""
    for number, record in records:
        if record.get(field) is not None and record[field] != label:
            raise UserError(
                f"{name}:{number}: field {field!r} is {record[field]!r}, but the mapping labels this file {label!r}"
            )
        record[field] = label


def _folder_files(path: Path) -> list[Path]:
    return [Path(root, file) for root, _, files in os.walk(path) for file in files]


def _frame(digest, parts: list) -> None:
    """Length-prefixed parts, so that different sources can never hash to the same byte stream."""
    blob = json.dumps(parts).encode()
    digest.update(len(blob).to_bytes(8, "big") + blob)


def _hash_file(digest, path: Path) -> None:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)


def _where(flag: str, name: str) -> str:
    return f"{flag} {name}" if flag else name
