"""The claims page: verdicts follow from the figures (Welch's t-test, the collapse level), the kernel identities hold, and
one claim checked end to end on the tiny data writes its page, its data and the commands behind it."""

import json


import nocollapse.claims as claims
from conftest import TINY_RUN
from nocollapse.claims import FAILS, HOLDS, SPREAD, collapse_part, compare, kernel_family_parts, planned_runs
from nocollapse.cli import main
from nocollapse.report.runs import RunRecord
from nocollapse.train.loop import load_run_config

from test_report import Page


def run_with(tmp_path, knn=None, std=None, dim=16, rankme=8.0):
    geometry = {"dim": dim, "std": std, "uniformity": -1.0, "rankme": rankme}
    projections = [{"name": "byol projections", "dim": dim, "geometry": geometry}] if std is not None else []
    rows = [{"name": "byol convnet", "dim": 16, "knn": {"20": knn} if knn is not None else {}, "geometry": {"rankme": 5.0, "separability": 1.2}}]
    return RunRecord(path=tmp_path, label="r", config={}, environment={}, evaluation={"rows": rows, "projections": projections})


def test_a_difference_is_a_verdict_only_beyond_the_seed_spread():
    knn = "kNN k=20 (%)"
    assert compare([0.90, 0.91, 0.905], [0.85, 0.86, 0.855], "a beats b", knn).verdict == HOLDS
    assert compare([0.85, 0.86, 0.855], [0.90, 0.91, 0.905], "a beats b", knn).verdict == FAILS
    assert compare([0.90, 0.86, 0.88], [0.89, 0.87, 0.88], "a beats b", knn).verdict == SPREAD
    assert compare([0.9], [0.8], "a beats b", knn).verdict == SPREAD  # one seed each: nothing to test
    lower = compare([-3.0, -3.1], [-2.0, -2.1], "more uniform", "proj. uniformity", higher_is_better=False)
    assert lower.verdict == HOLDS and "difference -1.000" in lower.evidence


def test_collapse_is_the_projections_spread_below_the_warning_level(tmp_path):
    collapsed = [run_with(tmp_path, std=0.001), run_with(tmp_path, std=0.002)]  # std·√16 = 0.004, 0.008: below 0.1
    spread = [run_with(tmp_path, std=0.2), run_with(tmp_path, std=0.21)]  # 0.8, 0.84
    assert collapse_part(collapsed, "it collapses", collapses=True).verdict == HOLDS
    assert collapse_part(spread, "it collapses", collapses=True).verdict == FAILS
    assert collapse_part(spread, "it does not collapse", collapses=False).verdict == HOLDS
    mixed = collapse_part([collapsed[0], spread[0]], "it collapses", collapses=True)
    assert mixed.verdict == SPREAD and "the seeds disagree" in mixed.evidence
    # Spread along one direction (dimensional collapse): RankMe below the warning level (2 directions here) counts too.
    on_a_line = [run_with(tmp_path, std=0.2, rankme=1.2), run_with(tmp_path, std=0.2, rankme=1.1)]
    assert collapse_part(on_a_line, "it collapses", collapses=True).verdict == HOLDS


def test_the_kernel_family_identities_hold_against_their_closed_forms():
    parts, rows = kernel_family_parts((32, 64), repeats=1)
    assert [part.verdict for part in parts[:3]] == [HOLDS, HOLDS, HOLDS]  # the cost verdict (parts[3]) is a timing: not asserted
    assert [row[0] for row in rows] == ["32", "64"]


def test_every_setting_is_trained_once_for_each_seed_and_the_quick_budget_shortens_it():
    runs = planned_runs(claims.CLAIMS, claims.QUICK)
    names = [run.name for run in runs]
    assert len(names) == len(set(names)) == 9 * 2  # BYOL is shared by three claims
    by_name = {run.name: run for run in runs}
    assert "model.predictor_hidden=0" in by_name["byol-no-predictor-seed1"].overrides
    assert "optim.epochs=1" in by_name["byol-seed0"].overrides and "optim.epochs=2" in by_name["wmse2-seed0"].overrides
    full = {run.name: run for run in planned_runs(claims.CLAIMS, claims.FULL)}
    assert all("optim.epochs=1" not in run.overrides and not any(o.startswith("eval.") for o in run.overrides) for run in full.values())
    assert all("eval.train_samples=10000" in run.overrides for run in runs)  # quick: kNN from the monitor's bank
    # W-MSE 2 and 4 at the same steps of 256 views: 6 × 468 against 3 × 937 in full, 2 × 468 against 1 × 937 when quick.
    assert "optim.epochs=6" in full["wmse2-seed0"].overrides and by_name["wmse4-seed0"].overrides[0] == "optim.epochs=1"


def test_one_claim_checked_end_to_end_writes_its_verdict_its_figures_and_its_commands(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(claims, "QUICK", claims.Budget(seeds=(0, 1), quick=True, kernel_sizes=(32, 64)))
    fixed = [item for item in TINY_RUN if not item.startswith(("optim.epochs=", "optim.warmup_epochs="))]
    out = tmp_path / "claims"
    assert main(["claims", "--quick", "--only", "byol-collapse,kernel-family", "--out", str(out), *fixed, f"data.data_dir={tiny_data}",
                 "eval.online_probe=false", "run.device=cpu"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "claims.json").read_text())
    assert [claim["key"] for claim in saved["claims"]] == ["byol-collapse", "kernel-family"]
    byol = saved["claims"][0]
    assert byol["verdict"] in (HOLDS, FAILS, SPREAD) and len(byol["parts"]) == 3 and f"{byol['verdict']}" in printed
    # The table's figures are the runs' own, mean ± std over the two seeds.
    spreads = [next(p for p in json.loads((out / "runs" / f"byol-no-ema-seed{s}" / "eval.json").read_text())["projections"]
                    if not p["name"].startswith("random"))["geometry"] for s in (0, 1)]
    shown = [row for row in byol["rows"] if row[0].startswith("BYOL with τ = 0")][0]
    values = [g["std"] * g["dim"] ** 0.5 for g in spreads]
    assert shown[byol["header"].index("proj. std·√d")].startswith(f"{sum(values) / 2:.3f}")
    # Settings given for every run (here the tiny network's predictor width) never undo what a claim tests.
    assert load_run_config(out / "runs" / "byol-no-predictor-seed0").model.predictor_hidden == 0
    assert load_run_config(out / "runs" / "byol-no-ema-seed1").method.byol.ema_schedule == "constant"
    page = Page((out / "index.html").read_text())
    assert page.sections == ["byol-collapse", "kernel-family"]
    html = (out / "index.html").read_text()
    assert "nocollapse train --preset fmnist-byol" in html and "model.predictor_hidden=0" in html and "run.seed=1" in html
    # Run again: the runs are done, nothing trains, the same verdict.
    assert main(["claims", "--quick", "--only", "byol-collapse", "--out", str(out), *fixed, f"data.data_dir={tiny_data}",
                 "eval.online_probe=false", "run.device=cpu"]) == 0
    assert "6 done before, 0 to train" in capsys.readouterr().out
    again = json.loads((out / "claims.json").read_text())
    assert again["claims"][0]["verdict"] == byol["verdict"] and again["reused_runs"] == 6 and saved["reused_runs"] == 0
    # A run evaluated on another number of training images (an older nocollapse's 60k bank) does not compare with the rest.
    evaluation = out / "runs" / "byol-seed1" / "eval.json"
    evaluation.write_text(json.dumps({**json.loads(evaluation.read_text()), "labelled_train_images": 60000}))
    assert main(["claims", "--quick", "--only", "byol-collapse", "--out", str(out), *fixed, f"data.data_dir={tiny_data}",
                 "eval.online_probe=false", "run.device=cpu"]) == 2
    assert "fitted their kNN on different numbers of training images (byol-no-ema-seed0: 128" in capsys.readouterr().err


def test_an_unknown_claim_is_refused_with_the_list(tmp_path, capsys):
    assert main(["claims", "--only", "byol-colapse", "--out", str(tmp_path / "c")]) == 2
    assert "no such claim; the claims: byol-collapse, wmse-views" in capsys.readouterr().err


def test_the_kernel_claim_alone_needs_no_run(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "FULL", claims.Budget(seeds=(0,), quick=False, kernel_sizes=(32, 64)))
    verdicts = claims.check_claims(tmp_path / "k", only=["kernel-family"], log=lambda *_: None)
    assert [v.claim.key for v in verdicts] == ["kernel-family"] and not (tmp_path / "k" / "runs").exists()
