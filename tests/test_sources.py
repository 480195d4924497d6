"""Data sources: every file type, folder, hub name and {label: file} mapping, with record numbers and error messages."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import pytest
from conftest import SHARED_DATASETS as SHARED

from lightning_ft.data import sources
from lightning_ft.data.sources import check_data_source, fingerprint, read_records
from lightning_ft.errors import UserError

FLAG = "--data.train_path"


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def read(path: Path | dict, **kwargs) -> list:
    source = {k: str(v) for k, v in path.items()} if isinstance(path, dict) else str(path)
    return read_records(source, FLAG, **kwargs)


def error(path: Path | dict | str, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        read(Path(path) if isinstance(path, str) else path, **kwargs)
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one line
    return message


# --- each type and its record numbers ---


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_jsonl_numbers_are_lines_and_blank_lines_are_skipped(tmp_path, suffix):
    path = write(tmp_path / f"d{suffix}", '{"a": 1}\n\n  \n{"a": 2}\r\n{"a": "x"}')
    assert read(path) == [(1, {"a": 1}), (4, {"a": 2}), (5, {"a": "x"})]


def test_json_array_numbers_are_item_indexes(tmp_path):
    path = write(tmp_path / "d.json", '[\n  {"a": 1},\n\n  {"a": 2}\n]\n')
    assert read(path) == [(1, {"a": 1}), (2, {"a": 2})]


def test_csv_numbers_are_the_line_a_row_starts_on(tmp_path):
    path = write(tmp_path / "d.csv", 'text,label\n"two\nlines",1\n\nplain,0\r\n"a, b",2\n')
    assert read(path) == [
        (2, {"text": "two\nlines", "label": "1"}),
        (5, {"text": "plain", "label": "0"}),
        (6, {"text": "a, b", "label": "2"}),
    ]


def test_tsv(tmp_path):
    path = write(tmp_path / "d.tsv", "text\tlabel\na, b\tpos\n")
    assert read(path) == [(2, {"text": "a, b", "label": "pos"})]


def test_parquet_numbers_are_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["x", "y"], "n": [1, 2]}), tmp_path / "d.parquet")
    assert read(tmp_path / "d.parquet") == [(1, {"text": "x", "n": 1}), (2, {"text": "y", "n": 2})]


def test_txt_one_record_per_non_blank_line(tmp_path):
    path = write(tmp_path / "d.txt", "first line \r\n\nsecond\n")
    assert read(path) == [(1, {"text": "first line "}), (3, {"text": "second"})]
    assert read(path, text_field="sentence")[0] == (1, {"sentence": "first line "})


@pytest.mark.parametrize("compression, compress", [(".gz", gzip.compress), (".bz2", bz2.compress)])
def test_compressed_files_take_the_type_before_the_compression_suffix(tmp_path, compression, compress):
    jsonl = write(tmp_path / f"d.jsonl{compression}", compress(b'{"a": 1}\n\n{"a": 2}\n'))
    assert read(jsonl) == [(1, {"a": 1}), (3, {"a": 2})]
    csv = write(tmp_path / f"d.csv{compression}", compress(b"a,b\n1,2\n"))
    assert read(csv) == [(2, {"a": "1", "b": "2"})]


def test_compressed_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1, 2, 3]}), tmp_path / "d.parquet")
    path = write(tmp_path / "d.parquet.gz", gzip.compress((tmp_path / "d.parquet").read_bytes()))
    assert [n for n, _ in read(path)] == [1, 2, 3]


def test_corrupt_compressed_file(tmp_path):
    path = write(tmp_path / "d.jsonl.gz", gzip.compress(b'{"a": 1}\n')[:-6])
    assert error(path).startswith(f"--data.train_path {path}: cannot decompress the .gz file (")


def test_bom_is_removed(tmp_path):
    assert read(write(tmp_path / "d.jsonl", b'\xef\xbb\xbf{"a": 1}\n')) == [(1, {"a": 1})]
    assert read(write(tmp_path / "d.csv", b"\xef\xbb\xbftext\nx\n")) == [(2, {"text": "x"})]


# --- save_to_disk folders ---


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    data = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    data.save_to_disk(str(tmp_path / "single"))
    assert read(tmp_path / "single") == [(1, {"text": "a", "label": 0}), (2, {"text": "b", "label": 1})]
    datasets.DatasetDict(train=data, test=data.select([1])).save_to_disk(str(tmp_path / "dict"))
    assert read(tmp_path / "dict", split="test") == [(1, {"text": "b", "label": 1})]
    assert len(read(tmp_path / "dict")) == 2
    assert error(tmp_path / "dict", split="validation") == (
        f"{FLAG} {tmp_path / 'dict'}: no split 'validation' in this DatasetDict (splits there: train, test)"
    )


def test_plain_folder_is_rejected(tmp_path):
    (tmp_path / "plain").mkdir()
    assert "not one saved with datasets' save_to_disk" in error(tmp_path / "plain")


# --- {label: file} mappings ---


def test_mapping_of_plain_text_files_labels_every_line(tmp_path):
    neg = write(tmp_path / "rt-polarity.neg", "dull .\nbad , bad .\n")
    pos = write(tmp_path / "rt-polarity.pos", "fun .\n")
    assert read({"neg": neg, "pos": pos}) == [
        (1, {"text": "dull .", "label": "neg"}),
        (2, {"text": "bad , bad .", "label": "neg"}),
        (1, {"text": "fun .", "label": "pos"}),
    ]
    assert read({"pos": pos}, label_field="y", text_field="x") == [(1, {"x": "fun .", "y": "pos"})]


def test_mapping_of_jsonl_files_and_conflicting_label(tmp_path):
    a = write(tmp_path / "a.jsonl", '{"text": "x"}\n{"text": "y", "label": "good"}\n')
    b = write(tmp_path / "b.jsonl.gz", gzip.compress(b'{"text": "z", "label": "bad"}\n'))
    assert read({"good": a, "bad": b}) == [
        (1, {"text": "x", "label": "good"}),
        (2, {"text": "y", "label": "good"}),
        (1, {"text": "z", "label": "bad"}),
    ]
    assert error({"bad": a}) == f"{a}:2: field 'label' is 'good', but the mapping labels this file 'bad'"


def test_mapping_errors(tmp_path):
    assert error({"pos": tmp_path / "missing.pos"}) == f"{FLAG} {tmp_path / 'missing.pos'}: no such file"
    with pytest.raises(UserError, match="an empty mapping"):
        read_records({}, FLAG)


# --- error messages ---


def test_malformed_jsonl_line_and_column(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"a": 1}\n\n{"a": 2,, "b": 3}\n')
    assert error(path) == f"{path}:3: invalid JSON (Expecting property name enclosed in double quotes at column 9)"


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"a": 1}\n[1, 2]\n')
    assert error(path) == f"{path}:2: expected a JSON object, got array"


def test_json_errors(tmp_path):
    top = write(tmp_path / "top.json", '{"data": []}')
    assert error(top) == f"{top}: expected a JSON array of objects, got object"
    bad = write(tmp_path / "bad.json", '[\n{"a": 1},\n{"a": }\n]')
    assert error(bad) == f"{bad}:3: invalid JSON (Expecting value)"
    lines = write(tmp_path / "lines.json", '{"a": 1}\n{"a": 2}\n')
    assert error(lines).startswith(f"{lines}:2: invalid JSON (Extra data); one object per line")
    item = write(tmp_path / "item.json", '[{"a": 1}, "x"]')
    assert error(item) == f"{item}: item 2: expected a JSON object, got string"


def test_csv_row_with_more_or_fewer_cells_than_the_header(tmp_path):
    more = write(tmp_path / "more.csv", "a,b\n1,2\n\n1,2,3\n")
    assert error(more) == f"{more}:4: 3 cells, but the header has 2 fields"
    fewer = write(tmp_path / "fewer.tsv", "a\tb\nonly\n")
    assert error(fewer) == f"{fewer}:2: 1 cells, but the header has 2 fields"


def test_csv_stray_quote_and_repeated_header(tmp_path):
    quote = write(tmp_path / "q.csv", 'a,b\n1,"x"y\n')
    assert error(quote).startswith(f"{quote}:2: invalid CSV (")
    repeated = write(tmp_path / "r.csv", "a,a\n1,2\n")
    assert error(repeated) == f"{repeated}:1: the header repeats the field 'a'"


def test_unsupported_suffix(tmp_path):
    path = write(tmp_path / "d.xlsx", "x")
    assert error(path) == (
        f"{FLAG} {path}: unsupported file type (supported: .jsonl, .json, .csv, .tsv, .parquet, "
        ".txt, each optionally .gz or .bz2; a folder saved with datasets' save_to_disk; "
        "a hub dataset name)"
    )


@pytest.mark.parametrize(
    "name",
    ["./nope", "../nope/data", "/nope/data", "~/nope-lightning-ft", "data/train.jsonl", "train.csv.gz", "has space"],
)
def test_missing_path(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        read_records(name, FLAG)
    assert str(info.value) == f"{FLAG} {name}: no such file"


def test_invalid_utf8_strict_names_line_byte_and_column(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"a": "ok"}\n{"a": "é'.encode() + b'\xff"}\n')
    assert error(path) == (
        f"{path}:2: not valid UTF-8 (byte 0xff at column 9); fix the file or set --data.encoding_errors replace"
    )
    text = write(tmp_path / "d.pos", b"\xef\xbb\xbfgood\nfine\nba\xe9d\n")
    assert error({"pos": text}).startswith(f"{text}:3: not valid UTF-8 (byte 0xe9 at column 3);")


def test_invalid_utf8_replace_warns_with_the_count(tmp_path):
    path = write(tmp_path / "d.txt", b"ok\nba\xe9d\nfine\nw\xffrse\xfe\n")
    with pytest.warns(UserWarning, match=rf"{path}: 2 line\(s\) not valid UTF-8 \(first: line 2\)"):
        records = read(path, encoding_errors="replace")
    assert records == [
        (1, {"text": "ok"}),
        (2, {"text": "ba\ufffdd"}),
        (3, {"text": "fine"}),
        (4, {"text": "w\ufffdrse\ufffd"}),
    ]


def test_hub_name_offline_gives_a_clear_error(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # both libraries read the variables when imported, which may have happened before this test
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    check_data_source("someorg/no-such-dataset", FLAG)  # shaped like a hub name: accepted without network
    with pytest.raises(UserError) as info:
        read_records("someorg/no-such-dataset", FLAG)
    message = str(info.value)
    assert message.startswith(
        f"{FLAG} someorg/no-such-dataset: not a local file or folder, and the hub dataset could not be loaded ("
    )
    assert message.endswith("); offline, point to a local file") and "\n" not in message


def test_bad_encoding_errors_value(tmp_path):
    path = write(tmp_path / "d.txt", "x\n")
    assert error(path, encoding_errors="ignore") == "--data.encoding_errors ignore: expected strict or replace"


# --- fingerprint ---


def test_fingerprint_of_files_folders_and_mappings(tmp_path):
    import datasets

    path = write(tmp_path / "d.jsonl", '{"a": 1}\n')
    first = fingerprint(str(path))
    assert first == fingerprint(str(path)) and len(first) == 64
    write(path, '{"a": 2}\n')
    assert fingerprint(str(path)) != first

    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"a": [1, 2]}).save_to_disk(str(folder))
    saved = fingerprint(str(folder))
    assert saved == fingerprint(str(folder))
    datasets.Dataset.from_dict({"a": [1, 3]}).save_to_disk(str(tmp_path / "other"))
    assert fingerprint(str(tmp_path / "other")) != saved

    neg, pos = write(tmp_path / "r.neg", "bad\n"), write(tmp_path / "r.pos", "good\n")
    mapping = fingerprint({"neg": str(neg), "pos": str(pos)})
    assert mapping == fingerprint({"neg": str(neg), "pos": str(pos)})
    assert fingerprint({"pos": str(neg), "neg": str(pos)}) != mapping  # same bytes, other labels
    write(pos, "great\n")
    assert fingerprint({"neg": str(neg), "pos": str(pos)}) != mapping


def test_fingerprint_of_hub_name_and_split():
    assert fingerprint("org/name") == fingerprint("org/name")
    assert fingerprint("org/name") != fingerprint("org/other")
    assert fingerprint("org/name", split="test") != fingerprint("org/name")


# --- check_data_source ---


def test_check_source_accepts_good_sources_without_reading_them(tmp_path, monkeypatch):
    import datasets

    datasets.Dataset.from_dict({"a": [1]}).save_to_disk(str(tmp_path / "saved"))
    broken = write(tmp_path / "broken.jsonl", "{not json at all\n")  # content is checked when read, not here
    gz = write(tmp_path / "d.csv.gz", gzip.compress(b"a\n1\n"))
    neg = write(tmp_path / "rt.neg", "bad\n")
    monkeypatch.setattr(sources, "_read_file", None)  # calling any reader would fail
    monkeypatch.setattr(Path, "read_bytes", None)
    for source in [str(broken), str(gz), str(tmp_path / "saved"), "imdb", "org/name-2.5", {"neg": str(neg)}]:
        check_data_source(source, FLAG)


def test_check_source_rejects_missing_unsupported_and_mislabeled(tmp_path):
    cases = {
        str(tmp_path / "missing.jsonl"): "no such file",
        str(write(tmp_path / "d.docx", "x")): "unsupported file type (supported: ",
        str(write(tmp_path / "d.jsonl.gz", '{"a": 1}\n')): "not a .gz file",
        str(write(tmp_path / "d.parquet", "a,b\n")): "not a .parquet file",
        str((tmp_path / "plain").mkdir() or tmp_path / "plain"): "not one saved with datasets' save_to_disk",
    }
    for source, expected in cases.items():
        with pytest.raises(UserError, match=rf"^--data\.train_path {source}: .*") as info:
            check_data_source(source, FLAG)
        assert expected in str(info.value)
    with pytest.raises(UserError, match="no such file"):
        check_data_source({"pos": str(tmp_path / "missing.pos")}, FLAG)


# --- the shared real datasets (read in place, never copied) ---


@pytest.mark.skipif(not SHARED.is_dir(), reason="no /work/shared/datasets on this machine")
def test_shared_rt_polarity_and_hh_rlhf():
    folder = SHARED / "rt_polarity"
    records = read_records({"neg": str(folder / "rt-polarity.neg"), "pos": str(folder / "rt-polarity.pos")}, FLAG)
    assert len(records) == 10662
    assert sum(r["label"] == "neg" for _, r in records) == sum(r["label"] == "pos" for _, r in records) == 5331
    assert records[0][0] == 1 and set(records[0][1]) == {"text", "label"}
    hh = read_records(str(SHARED / "hh_rlhf_harmless_base_test" / "test.jsonl.gz"), FLAG)
    assert len(hh) == 2312 and all(set(r) == {"chosen", "rejected"} for _, r in hh)
    assert [n for n, _ in hh[:3]] == [1, 2, 3]
