"""Human evaluation: blinded export, sheet validation, report statistics, agreement against published worked examples."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import krippendorff
import numpy as np
import pytest

from lightning_ft.commands import main as lightning_ft
from lightning_ft.commands.human_eval import main
from lightning_ft.errors import UserError
from lightning_ft.evaluation import human
from lightning_ft.evaluation.human import SCALES, export_sheet, fleiss, krippendorff_alpha, read_sheet, report

MODELS = ("zeta-7b", "omega-ft", "kappa-lora")
N_PROMPTS = 8


def write_outputs(folder: Path, models=MODELS, n=N_PROMPTS) -> dict[str, Path]:
    paths = {}
    for number, model in enumerate(models):
        rows = [
            {"id": i, "prompt": f"Question {i}: name a colour.", "output": f"reply {i} style {number}"}
            for i in range(n)
        ]
        paths[model] = folder / f"gen_{number}.jsonl"
        paths[model].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def fill(out: Path, name: str, score) -> Path:
    """An annotator's sheet: every scale of every row gets score(model, prompt_id, scale) (None = left empty)."""
    key = json.loads((out / "key.json").read_text())
    rows = read_csv(out / "sheet.csv")
    for row in rows:
        item = key["items"][row["item_id"]]
        for scale in SCALES:
            value = score(item["model"], item["prompt_id"], scale)
            row[scale] = "" if value is None else str(value)
    return write_csv(out.parent / name, rows)


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    out = tmp_path / "eval"
    export_sheet(write_outputs(tmp_path), n=5, seed=0, out=out)
    return out


# ------------------------------------------------------------------------------------------------------ export


def test_export_is_blinded_and_lists_every_model_per_prompt(tmp_path: Path, exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == ["README.txt", "key.json", "sheet.csv", "sheet.jsonl"]
    for name in ("sheet.csv", "sheet.jsonl", "README.txt"):
        text = (exported / name).read_text(encoding="utf-8")
        assert not any(model in text for model in MODELS), name
    rows = read_csv(exported / "sheet.csv")
    assert list(rows[0]) == ["item_id", "prompt", "label", "output", *SCALES, "comment"]
    assert all(row[column] == "" for row in rows for column in (*SCALES, "comment"))
    jsonl = [json.loads(line) for line in (exported / "sheet.jsonl").read_text().splitlines()]
    assert [r["item_id"] for r in jsonl] == [r["item_id"] for r in rows]
    assert all(r[scale] is None for r in jsonl for scale in SCALES)
    by_prompt: dict[str, list[str]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt"], []).append(row["label"])
    assert len(by_prompt) == 5
    assert all(labels == ["A", "B", "C"] for labels in by_prompt.values())

    key = json.loads((exported / "key.json").read_text())
    generations = {
        model: {str(r["id"]): r for r in map(json.loads, path.read_text().splitlines())}
        for model, path in write_outputs(tmp_path).items()
    }
    assert set(key["items"]) == {row["item_id"] for row in rows}
    for row in rows:  # the key unblinds each row to the model that wrote that output for that prompt
        item = key["items"][row["item_id"]]
        assert item["label"] == row["label"]
        assert generations[item["model"]][item["prompt_id"]]["output"] == row["output"]
        assert generations[item["model"]][item["prompt_id"]]["prompt"] == row["prompt"]


def test_labels_are_shuffled_per_prompt_and_deterministic_for_a_seed(tmp_path: Path) -> None:
    outputs = write_outputs(tmp_path)
    for name, seed in (("one", 3), ("two", 3), ("three", 4)):
        export_sheet(outputs, n=N_PROMPTS, seed=seed, out=tmp_path / name)
    key = json.loads((tmp_path / "one" / "key.json").read_text())
    first_model_labels = {item["label"] for item in key["items"].values() if item["model"] == MODELS[0]}
    assert len(first_model_labels) > 1  # the first model is not always "A"
    assert (tmp_path / "one" / "sheet.csv").read_bytes() == (tmp_path / "two" / "sheet.csv").read_bytes()
    assert (tmp_path / "one" / "key.json").read_text() == (tmp_path / "two" / "key.json").read_text()
    other = json.loads((tmp_path / "three" / "key.json").read_text())
    assignment = {(i["prompt_id"], i["model"]): i["label"] for i in key["items"].values()}
    assert assignment != {(i["prompt_id"], i["model"]): i["label"] for i in other["items"].values()}


def test_per_annotator_copies_hold_the_same_items_in_different_orders(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    export_sheet(write_outputs(tmp_path), n=6, seed=1, out=out, annotators=3)
    assert not (out / "sheet_4.csv").exists()
    main_ids = [row["item_id"] for row in read_csv(out / "sheet.csv")]
    orders = [[row["item_id"] for row in read_csv(out / f"sheet_{k}.csv")] for k in (1, 2, 3)]
    assert all(sorted(order) == sorted(main_ids) for order in orders)
    assert len({tuple(order) for order in [main_ids, *orders]}) == 4
    for order in orders:  # the outputs to one prompt stay together, labelled A, B, C
        assert [item.split("-")[0][-1] for item in order] == ["A", "B", "C"] * 6
    assert "sheet_1.csv" in (out / "README.txt").read_text()


def test_export_refuses_an_existing_folder(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    with pytest.raises(UserError, match=r"--out .*eval: already exists"):
        export_sheet(write_outputs(tmp_path), n=2, seed=0, out=out)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop", r"gen_1\.jsonl: no output for id '3' \(.*gen_0\.jsonl line 4 has it\)"),
        ("prompt", r"gen_1\.jsonl:4: id '3' has a different prompt than .*gen_0\.jsonl line 4"),
        ("extra", r"gen_1\.jsonl:9: id 'new' is not in .*gen_0\.jsonl"),
        ("duplicate", r"gen_1\.jsonl:9: id '3' repeats line 4"),
        ("field", r"gen_1\.jsonl:4: needs 'id' \(string or integer\), 'prompt' and 'output'"),
    ],
)
def test_mismatched_outputs_name_the_file_line_and_id_and_leave_nothing(tmp_path: Path, change, message) -> None:
    outputs = write_outputs(tmp_path)
    rows = [json.loads(line) for line in outputs[MODELS[1]].read_text().splitlines()]
    if change == "drop":
        del rows[3]
    elif change == "prompt":
        rows[3]["prompt"] = "Question 3: name a fruit."
    elif change == "extra":
        rows.append({"id": "new", "prompt": "p", "output": "o"})
    elif change == "duplicate":
        rows.append(rows[3])
    else:
        del rows[3]["output"]
    outputs[MODELS[1]].write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(UserError, match=message):
        export_sheet(outputs, n=3, seed=0, out=tmp_path / "eval")
    assert sorted(tmp_path.iterdir()) == before


def test_outputs_not_in_utf8_or_not_json_are_one_line_naming_file_and_line(tmp_path: Path, capsys) -> None:
    outputs = write_outputs(tmp_path)
    lines = outputs[MODELS[1]].read_bytes().splitlines(keepends=True)
    out = str(tmp_path / "eval")
    args = ["export", "--outputs", *(f"{name}={path}" for name, path in outputs.items()), "--n", "2", "--out", out]
    for bad, message in [
        (
            b'{"id": 4, "prompt": "caf\xe9", "output": "x"}\n',
            "not valid UTF-8 (byte 0xe9 at column 25); save it as UTF-8",
        ),
        (b'{"id": 4, "prompt": \n', "invalid JSON (Expecting value at column 21)"),
    ]:
        outputs[MODELS[1]].write_bytes(b"".join([*lines[:4], bad, *lines[5:]]))
        assert lightning_ft(["human-eval", *args]) == 2
        assert capsys.readouterr().err == f"error: {outputs[MODELS[1]]}:5: {message}\n"


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    outputs = write_outputs(tmp_path)
    before = sorted(tmp_path.iterdir())

    def broken(path: Path, annotators: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(human, "_write_readme", broken)
    with pytest.raises(OSError, match="disk full"):
        export_sheet(outputs, n=3, seed=0, out=tmp_path / "eval", annotators=2)
    assert sorted(tmp_path.iterdir()) == before  # neither the folder nor its temporary twin


def test_export_checks_n(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--n 9: the outputs have only 8 prompts"):
        export_sheet(write_outputs(tmp_path), n=9, seed=0, out=tmp_path / "eval")
    with pytest.raises(UserError, match=r"--n 0: must be at least 1"):
        export_sheet(write_outputs(tmp_path), n=0, seed=0, out=tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------------------ report


def test_constant_scores_give_zero_width_intervals(exported: Path) -> None:
    sheets = [fill(exported, f"ann{k}.csv", lambda model, prompt, scale: 4) for k in (1, 2)]
    result = report(exported / "key.json", sheets)
    for model in MODELS:
        for column in (*SCALES, "overall"):
            assert result["means"][model][column] == {"mean": 4.0, "ci_low": 4.0, "ci_high": 4.0, "n_items": 5}
    assert all(pair["ties"] == 5 and pair["win_rate"] == 0.5 for pair in result["win_rates"])
    # One value throughout: no expected disagreement, so neither agreement statistic is defined.
    assert all(
        a["krippendorff_alpha_ordinal"] is None and a["fleiss_kappa"] is None for a in result["agreement"].values()
    )


def test_means_and_t_intervals_match_a_hand_computation(exported: Path) -> None:
    key = json.loads((exported / "key.json").read_text())
    prompts = sorted({item["prompt_id"] for item in key["items"].values()}, key=int)
    first = {p: v for p, v in zip(prompts, (1, 2, 3, 4, 5), strict=True)}
    second = {p: v for p, v in zip(prompts, (3, 2, 3, 4, 5), strict=True)}
    sheets = [
        fill(exported, "ann1.csv", lambda model, prompt, scale: first[prompt] if model == MODELS[0] else 3),
        fill(exported, "ann2.csv", lambda model, prompt, scale: second[prompt] if model == MODELS[0] else 3),
    ]
    result = report(exported / "key.json", sheets)
    # Item means 2, 2, 3, 4, 5: mean 3.2, sd sqrt(1.7), t(0.975, df=4) = 2.776445 (t table).
    half = 2.776445 * np.sqrt(1.7) / np.sqrt(5)
    stats = result["means"][MODELS[0]]["fluency"]
    assert stats["mean"] == pytest.approx(3.2)
    assert stats["ci_low"] == pytest.approx(3.2 - half, abs=1e-5)
    assert stats["ci_high"] == pytest.approx(3.2 + half, abs=1e-5)
    assert result["means"][MODELS[0]]["overall"]["mean"] == pytest.approx(3.2)
    assert result["means"][MODELS[1]]["overall"] == {"mean": 3.0, "ci_low": 3.0, "ci_high": 3.0, "n_items": 5}


def test_win_rates_on_a_scripted_case(exported: Path) -> None:
    key = json.loads((exported / "key.json").read_text())
    prompts = sorted({item["prompt_id"] for item in key["items"].values()}, key=int)
    script = {  # per prompt: the scores of zeta, omega, kappa
        prompts[0]: (5, 3, 1),
        prompts[1]: (4, 2, 4),
        prompts[2]: (3, 3, 5),
        prompts[3]: (2, 4, 5),
        prompts[4]: (5, 1, 2),
    }
    sheets = [fill(exported, "ann1.csv", lambda model, prompt, scale: script[prompt][MODELS.index(model)])]
    pairs = {(p["model_a"], p["model_b"]): p for p in report(exported / "key.json", sheets)["win_rates"]}
    assert pairs[("zeta-7b", "omega-ft")] == {
        "model_a": "zeta-7b",
        "model_b": "omega-ft",
        "wins": 3,
        "ties": 1,
        "losses": 1,
        "n_prompts": 5,
        "win_rate": 0.7,
    }
    assert (pairs[("zeta-7b", "kappa-lora")]["wins"], pairs[("zeta-7b", "kappa-lora")]["ties"]) == (2, 1)
    assert pairs[("zeta-7b", "kappa-lora")]["win_rate"] == pytest.approx(0.5)
    assert pairs[("omega-ft", "kappa-lora")]["win_rate"] == pytest.approx(0.2)  # 1 win, 4 losses


def test_win_rates_average_scales_and_annotators(exported: Path) -> None:
    # zeta: fluency 5, rest 1 -> mean 1.8 from one annotator and 1.8 from the other; omega: 2 everywhere -> omega wins.
    score = {"zeta-7b": lambda scale: 5 if scale == "fluency" else 1, "omega-ft": lambda scale: 2}
    sheets = [
        fill(exported, f"ann{k}.csv", lambda model, prompt, scale: score.get(model, lambda s: 3)(scale)) for k in (1, 2)
    ]
    pair = report(exported / "key.json", sheets)["win_rates"][0]
    assert (pair["model_a"], pair["wins"], pair["losses"], pair["win_rate"]) == ("zeta-7b", 0, 5, 0.0)


@pytest.mark.parametrize("bad", ["6", "0", "x", "3.5", "-1"])
def test_a_score_outside_1_to_5_names_sheet_row_and_column(exported: Path, bad: str) -> None:
    sheet = fill(exported, "ann1.csv", lambda model, prompt, scale: 3)
    rows = read_csv(sheet)
    rows[2]["coherence"] = bad
    write_csv(sheet, rows)
    with pytest.raises(UserError, match=rf"ann1\.csv row 4, column 'coherence': '{bad}' is not an integer 1-5"):
        report(exported / "key.json", [sheet])


def test_jsonl_sheets_are_read_and_checked_by_line(exported: Path) -> None:
    key = json.loads((exported / "key.json").read_text())
    rows = [json.loads(line) for line in (exported / "sheet.jsonl").read_text().splitlines()]
    for row in rows:
        row.update({scale: 4 for scale in SCALES})
    rows[0]["fluency"] = 5.0  # what pandas writes for an integer column with gaps
    rows[1]["fluency"] = None
    sheet = exported.parent / "ann.jsonl"
    sheet.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ratings = read_sheet(sheet, key)
    assert ratings[0]["scores"]["fluency"] == 5 and ratings[1]["scores"]["fluency"] is None
    assert ratings[0]["model"] == key["items"][rows[0]["item_id"]]["model"]
    rows[4]["helpfulness"] = 6
    sheet.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"ann\.jsonl line 5, field 'helpfulness': 6 is not an integer 1-5"):
        read_sheet(sheet, key)


def test_unknown_and_duplicate_items_name_sheet_and_row(exported: Path) -> None:
    sheet = fill(exported, "ann1.csv", lambda model, prompt, scale: 3)
    rows = read_csv(sheet)
    write_csv(sheet, [*rows, rows[1]])
    with pytest.raises(
        UserError, match=rf"ann1\.csv row {len(rows) + 2}, column 'item_id': item '{rows[1]['item_id']}' repeats row 3"
    ):
        report(exported / "key.json", [sheet])
    rows[6]["item_id"] = "999Z-abcdef"
    write_csv(sheet, rows)
    with pytest.raises(UserError, match=r"ann1\.csv row 8, column 'item_id': unknown item '999Z-abcdef'"):
        report(exported / "key.json", [sheet])


def test_a_sheet_from_another_export_is_refused(tmp_path: Path, exported: Path) -> None:
    other = tmp_path / "other"
    export_sheet(write_outputs(tmp_path, models=("x1", "x2", "x3")), n=5, seed=0, out=other)
    sheet = fill(other, "ann1.csv", lambda model, prompt, scale: 3)
    with pytest.raises(UserError, match=r"ann1\.csv row 2, column 'item_id': unknown item .*another export"):
        report(exported / "key.json", [sheet])
    sheet.write_text("")
    with pytest.raises(UserError, match=r"ann1\.csv: empty sheet"):
        report(exported / "key.json", [sheet])


def test_missing_scores_are_tolerated(exported: Path) -> None:
    key = json.loads((exported / "key.json").read_text())
    first_prompt = min((item["prompt_id"] for item in key["items"].values()), key=int)

    def sparse(model, prompt, scale):
        if model == MODELS[0] and scale == "factuality":
            return None  # nobody judged this model's factuality
        if prompt == first_prompt and scale == "fluency":
            return None
        return 4 if model == MODELS[0] else 2

    sheets = [fill(exported, "ann1.csv", sparse)]
    rows = read_csv(sheets[0])
    sheets.append(write_csv(exported.parent / "ann2.csv", rows[:6]))  # the second annotator stopped early
    result = report(exported / "key.json", sheets)
    assert result["means"][MODELS[0]]["factuality"] == {"mean": None, "ci_low": None, "ci_high": None, "n_items": 0}
    assert result["means"][MODELS[0]]["fluency"]["n_items"] == 4
    assert result["means"][MODELS[0]]["overall"]["mean"] == 4.0
    assert result["agreement"]["relevance"]["fleiss_items"] == 6
    assert result["ratings"] == {"given": (75 - 5 - 3) + (30 - 2 - 3), "possible": 2 * 15 * 5}


# ------------------------------------------------------------------------------------------------------ agreement

# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories; counts per category -> kappa 0.210.
WIKIPEDIA_FLEISS = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers x 12 units, missing values.
# Published: nominal 0.743, ordinal 0.815, interval 0.849.
NAN = np.nan
KRIPPENDORFF_2011 = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
        [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
    ]
)


def coincidence_alpha(data: np.ndarray, level: str) -> float:
    """Krippendorff's alpha straight from the coincidence matrix (Krippendorff 2011), independent of the library."""
    values = np.unique(data[~np.isnan(data)])
    index = {value: i for i, value in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for unit in data.T:
        rated = unit[~np.isnan(unit)]
        for i, c in enumerate(rated):
            for j, k in enumerate(rated):
                if i != j:
                    o[index[c], index[k]] += 1 / (len(rated) - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    delta = np.zeros_like(o)
    for c in range(len(values)):
        for k in range(len(values)):
            if level == "nominal":
                delta[c, k] = float(c != k)
            elif level == "interval":
                delta[c, k] = (values[c] - values[k]) ** 2
            else:  # ordinal
                low, high = min(c, k), max(c, k)
                delta[c, k] = (n_c[low : high + 1].sum() - (n_c[c] + n_c[k]) / 2) ** 2
    return 1 - (n - 1) * (o * delta).sum() / (np.outer(n_c, n_c) * delta).sum()


def test_fleiss_kappa_matches_the_wikipedia_worked_example() -> None:
    raters = [
        [category for category, count in enumerate(row, start=1) for _ in range(count)] for row in WIKIPEDIA_FLEISS
    ]
    ratings = np.array(raters, dtype=float).T  # (14 raters, 10 subjects)
    kappa, items = fleiss(ratings)
    assert kappa == pytest.approx(0.210, abs=5e-4)
    assert items == 10
    with_gap = np.hstack([ratings, np.full((14, 1), 3.0)])
    with_gap[0, -1] = NAN  # one rater skipped the 11th subject: Fleiss uses only the 10 complete ones
    assert fleiss(with_gap) == (pytest.approx(kappa), 10)


def test_krippendorff_alpha_matches_the_2011_worked_example() -> None:
    assert krippendorff_alpha(KRIPPENDORFF_2011, level="nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(KRIPPENDORFF_2011, level="interval") == pytest.approx(0.849, abs=5e-4)
    ordinal = krippendorff_alpha(KRIPPENDORFF_2011)
    assert ordinal == pytest.approx(
        krippendorff.alpha(reliability_data=KRIPPENDORFF_2011, level_of_measurement="ordinal")
    )
    assert ordinal == pytest.approx(coincidence_alpha(KRIPPENDORFF_2011, "ordinal"))
    assert ordinal == pytest.approx(0.815, abs=5e-4)
    for level in ("nominal", "interval"):  # the independent implementation agrees with the published values too
        assert coincidence_alpha(KRIPPENDORFF_2011, level) == pytest.approx(
            krippendorff_alpha(KRIPPENDORFF_2011, level)
        )


def test_perfect_agreement_gives_one_and_undefined_cases_none() -> None:
    perfect = np.array([[1, 2, 3, 5, 4, NAN], [1, 2, 3, 5, 4, 2], [1, NAN, 3, 5, 4, 2]])
    assert krippendorff_alpha(perfect) == 1.0
    assert fleiss(perfect) == (1.0, 4)
    assert krippendorff_alpha(perfect[:1]) is None  # one annotator
    assert krippendorff_alpha(np.array([[1, NAN], [NAN, 2]])) is None  # no item rated twice


def test_report_agreement_is_perfect_when_annotators_agree(exported: Path) -> None:
    def score(model, prompt, scale):
        return 1 + (int(prompt) + MODELS.index(model) + SCALES.index(scale)) % 5

    sheets = [fill(exported, f"ann{k}.csv", score) for k in (1, 2, 3)]
    agreement = report(exported / "key.json", sheets)["agreement"]
    for scale in SCALES:
        assert agreement[scale] == {
            "krippendorff_alpha_ordinal": 1.0,
            "alpha_items": 15,
            "fleiss_kappa": 1.0,
            "fleiss_items": 15,
        }


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_export_then_report_writes_json(tmp_path: Path, capsys) -> None:
    outputs = write_outputs(tmp_path)
    out = tmp_path / "eval"
    main(
        [
            "export",
            "--outputs",
            *(f"{m}={p}" for m, p in outputs.items()),
            "--n",
            "4",
            "--seed",
            "7",
            "--out",
            str(out),
            "--annotators",
            "2",
        ]
    )
    assert "keep it from the annotators" in capsys.readouterr().out
    assert (out / "sheet_2.csv").exists()
    sheets = [fill(out, f"ann{k}.csv", lambda model, prompt, scale: 2 + MODELS.index(model)) for k in (1, 2)]
    target = tmp_path / "reports" / "report.json"
    main(["report", "--key", str(out / "key.json"), *map(str, sheets), "--output", str(target)])
    printed = capsys.readouterr().out
    assert "win rate" in printed and "Krippendorff" in printed and "kappa-lora" in printed
    result = json.loads(target.read_text())
    assert result["annotators"] == 2 and result["models"] == list(MODELS)
    assert result["means"]["kappa-lora"]["overall"]["mean"] == 4.0
    assert result["win_rates"][0]["win_rate"] == 0.0  # zeta (2) always loses to omega (3)
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "--outputs", "a.jsonl", "--n", "2", "--out", "x"], r"--outputs: 'a.jsonl' is not NAME=FILE"),
        (["export", "--outputs", "a=x.jsonl", "--n", "two", "--out", "x"], r"--n: expected a whole number, got 'two'"),
        (["report", "--key", "k.json"], r"arguments are required: report.sheets .*human-eval report --help"),
        (["publish"], r"invalid choice: 'publish' .*human-eval --help"),
        (["report", "--key", "missing.json", "s.csv"], r"--key missing.json: no such file"),
    ],
)
def test_cli_mistakes_are_one_error_line(cli, capsys, tmp_path: Path, monkeypatch, argv, message) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli(["human-eval", *argv]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and re.search(f"^error: .*{message}", errors[0]), errors
