"""`auditor report`: one self-contained HTML file with thumbnails, histogram and recall table."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from auditor.cli.main import app
from auditor.data.base import Examples
from auditor.data.bundled import digits, flip_labels, write_npz


def test_label_check_report_embeds_thumbnails_and_recall_of_known_flips(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDITOR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AUDITOR_DATABASE_URL", raising=False)
    monkeypatch.delenv("AUDITOR_BROKER_URL", raising=False)
    ex = digits()
    small = Examples(ex.x[:200], ex.y[:200], ex.keys[:200], is_image=True)
    noisy, flipped = flip_labels(small, 0.1, seed=1)
    write_npz(noisy, tmp_path / "d.npz")
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"flipped_indices": flipped.tolist()}))
    runner = CliRunner()
    assert runner.invoke(app, ["dataset", "add", "d", str(tmp_path / "d.npz")]).exit_code == 0
    run = runner.invoke(app, ["audit", "run", "label-check", "d", "--json"])
    assert run.exit_code == 0, run.output
    audit_id = json.loads(run.stdout)["id"]
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(audit_id), "--out", str(out), "--truth", str(truth), "--top", "12"])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.startswith("<!doctype html>")
    assert "src='http" not in page and 'src="http' not in page  # nothing fetched from elsewhere
    # 12 thumbnails + histogram + recall curve, all embedded
    assert len(re.findall(r"data:image/png;base64,", page)) >= 14
    assert "Recall of known wrong labels" in page
    assert page.count("class=\"card bad\"") >= 1  # flagged cards that are known flips are marked


def test_report_of_an_unfinished_audit_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDITOR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AUDITOR_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["report", "999", "--out", str(tmp_path / "r.html")])
    assert result.exit_code != 0
    assert "no audit with id 999" in result.output
    assert not (tmp_path / "r.html").exists()
