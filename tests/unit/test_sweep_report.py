"""`rlhf-ray report DIR` on a sweep: one plot of every run's curves, final figures sorted."""

from __future__ import annotations

import json

from rlhf_ray.cli import main


def _run(sweep, name, rewards, kls):
    (sweep / name).mkdir(parents=True)
    lines = [
        json.dumps({"iteration": i + 1, "reward/mean": r, "kl/mean": k}) for i, (r, k) in enumerate(zip(rewards, kls))
    ]
    (sweep / name / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines))


def test_report_on_a_sweep_sorts_runs_by_final_reward(tmp_path, capsys):
    sweep = tmp_path / "sw"
    _run(sweep, "low", [0.0, 0.1, 0.2, 0.3], [0.0, 1.0, 2.0, 3.0])  # last 3: reward 0.2, KL 2.0
    _run(sweep, "high", [0.5, 0.9, 1.0, 1.1], [0.0, 0.5, 0.5, 0.5])  # last 3: reward 1.0, KL 0.5
    (sweep / "none").mkdir()
    (sweep / "high" / "eval.json").write_text(
        json.dumps({"reference": {"reward/mean": 0.25}, "policy": {"reward/mean": 0.75}})
    )
    runs = [
        {"name": "low", "state": "done"},
        {"name": "none", "state": "failed", "error": "boom"},
        {"name": "high", "state": "done"},
    ]
    (sweep / "sweep.json").write_text(json.dumps({"runs": runs}))
    assert main(["report", str(sweep)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in out["runs"]] == ["high", "low", "none"]
    assert abs(out["runs"][0]["reward"] - 1.0) < 1e-9 and abs(out["runs"][1]["kl"] - 2.0) < 1e-9
    text = (sweep / "report.md").read_text()
    assert text.index("| high |") < text.index("| low |") < text.index("| none |")
    assert "| high | done | 4 | +1.000 | +0.500 | +0.250 | +0.750 |" in text
    assert "- none: boom" in text
    if out["plot"]:  # matplotlib is installed here: one PNG for every run
        assert (sweep / "sweep.png").read_bytes()[:4] == b"\x89PNG"
