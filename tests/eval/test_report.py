"""`ckf report`: runs grouped by variant across seeds, mean ± sample sd, baselines once per seed."""

import json

from ckf_dist.cli import main
from ckf_dist.config import load_config, save_config
from ckf_dist.eval.report import collect, report_markdown


def _run(tmp_path, name, seed, auc, overrides=(), baseline_auc=None):
    d = tmp_path / name
    cfg = load_config(None, [f"run.dir={d}", f"seed={seed}", *overrides])
    save_config(cfg, d / "config.yaml")
    (d / "metrics.json").write_text(json.dumps({"ctr": {"auc": auc, "uauc": None, "n": 10}, "rating": {"rmse": 1.0 + auc}}))
    if baseline_auc is not None:
        (d / "cf").mkdir()
        (d / "cf" / "baselines.json").write_text(json.dumps({"results": {"test": {"mf": {"ctr": {"auc": baseline_auc}}}}}))
    return str(d)


def test_report_groups_seeds_and_variants(tmp_path, capsys):
    runs = [
        _run(tmp_path, "ckf0", 0, 0.70, baseline_auc=0.60),
        _run(tmp_path, "ckf1", 1, 0.74, baseline_auc=0.62),
        _run(tmp_path, "text0", 0, 0.65, ["model.cf_fusion=false"], baseline_auc=0.60),
        _run(tmp_path, "collm0", 0, 0.68, ["model.mapping=collm"]),
    ]
    rows = {r["name"]: r for r in collect(runs)}
    assert rows["CKF"]["seeds"] == [0, 1]
    assert "text-only LLM + LoRA (TALLRec-style)" in rows and "CoLLM-style (shared MLP mapping, one LoRA)" in rows
    assert rows["mf (CF baseline)"]["seeds"] == [0, 1]  # once per seed, not once per run
    table = report_markdown(list(rows.values()))
    # mean 0.72, sample sd of (0.70, 0.74) = 0.0283
    assert "| CKF | 2 | 0.7200 ± 0.0283 |" in table
    assert "| mf (CF baseline) | 2 | 0.6100 ± 0.0141 |" in table
    assert "ctr uauc" not in table  # a column with no values is dropped
    assert main(["report", *runs, "--out", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text().strip() == capsys.readouterr().out.strip()
