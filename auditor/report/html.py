"""`auditor report AUDIT --out report.html`: one self-contained HTML page per audit.

Everything (thumbnails, plots, attack previews) is embedded as data URIs, so the file can be
mailed or attached to a ticket. Sections depend on the audit kind; all of them start with the
audit's facts and the analysis summary.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from auditor.config import Settings, artifacts_dir
from auditor.data.options import DataOptions
from auditor.errors import AuditorError, DataError
from auditor.findings_view import AuditContext, audit_context, load_example
from auditor.report.images import histogram, png_data_uri, recall_curve, thumbnail
from auditor.resolve import load_dataset_source
from auditor.store import audits as audit_store
from auditor.store import findings as finding_store

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em} td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;padding:4px;font-size:.75em;text-align:center;width:84px}
.card img{image-rendering:pixelated;width:64px;height:64px}.bad{border-color:#d33;background:#fee}
.row{display:flex;gap:14px;align-items:flex-start;margin:10px 0}.muted{color:#777}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _card(img_uri: str | None, lines: list[str], bad: bool = False) -> str:
    img = f'<img src="{img_uri}">' if img_uri else ""
    return f'<div class="card{" bad" if bad else ""}">{img}<br>' + "<br>".join(_e(s) for s in lines) + "</div>"


def _truth(path: Path | None) -> set[int] | None:
    if path is None:
        return None
    if not path.exists():
        raise DataError(f"{path}: no such truth file")
    try:
        doc = json.loads(path.read_text())
        idx = doc["flipped_indices"] if isinstance(doc, dict) else doc
        return {int(i) for i in idx}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path}: not a truth file (JSON: a list of example indices, or {{\"flipped_indices\": [...]}}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _label_check(findings, examples, truth: set[int] | None, top: int, rank_by: str, ctx: AuditContext) -> str:
    parts = ["<h2>Top flagged examples</h2><div class='grid'>"]
    for f in findings[:top]:
        found = load_example(examples, f) if examples is not None else None
        uri = thumbnail(found[0]) if (found is not None and examples.is_image) else None
        p = f.payload or {}
        suggested = p.get("suggested_label")
        lines = [
            f"#{f.rank} {ctx.locator(f.example_index)}",
            f"{ctx.class_name(f.label)} → {ctx.class_name(suggested) if suggested is not None else '?'}",
            f"{f.score:.3g}",
        ]
        parts.append(_card(uri, lines, bad=truth is not None and f.example_index in truth))
    parts.append("</div>")
    scores = np.array([f.score for f in findings])
    marks = None if truth is None else np.array([f.example_index in truth for f in findings])
    parts.append(f"<h2>Score distribution</h2><img src='{histogram(scores, 'ranking score', log=True, marks=marks)}'>")
    if truth is not None and findings:
        def by(key: str) -> list[int]:
            return [f.example_index for f in sorted(findings, key=lambda f: -f.payload.get(key, f.score))]

        order = {
            "margin": by("margin"),
            "leave-one-out margin": by("loo_margin"),
            "self-influence": by("self_influence"),
            "training loss": by("loss"),
        }
        if rank_by not in ("margin", "loo-margin", "self-influence", "loss"):
            order[f"this audit's ranking ({rank_by})"] = [f.example_index for f in findings]
        rng = np.random.default_rng(0)
        order["random"] = list(rng.permutation([f.example_index for f in findings]))
        curves = {k: np.cumsum([i in truth for i in v]) / max(len(truth), 1) for k, v in order.items()}
        n = len(findings)
        rows = "".join(
            f"<tr><td>{_e(k)}</td>" + "".join(f"<td>{c[max(int(round(b * n)) - 1, 0)]:.2f}</td>" for b in (0.05, 0.1, 0.2, 0.3)) + "</tr>"
            for k, c in curves.items()
        )
        parts.append(
            "<h2>Recall of known wrong labels</h2><table><tr><th>ranking</th><th>5%</th><th>10%</th><th>20%</th><th>30%</th></tr>"
            f"{rows}</table><img src='{recall_curve(curves)}'>"
        )
    return "".join(parts)


def _explain(findings, train, test, ctx: AuditContext) -> str:
    by_test: dict[int, dict[str, list]] = {}
    for f in findings:
        kind, _, t = f.kind.partition(":t")
        by_test.setdefault(int(t), {}).setdefault(kind, []).append(f)
    parts = []
    for t, groups in sorted(by_test.items()):
        any_f = next(iter(groups.values()))[0]
        p = any_f.payload or {}
        test_uri = thumbnail(test.x[t]) if (test is not None and test.is_image and t < len(test)) else None
        parts.append(f"<h2>Test point {t}: label {p.get('test_label')}, predicted {p.get('test_pred')}, loss {p.get('test_loss', 0):.3f}</h2>")
        parts.append("<div class='row'>" + _card(test_uri, ["test", f"label {p.get('test_label')}"]) + "</div>")
        for kind, title in (("helpful", "most helpful (removing raises the loss)"), ("harmful", "most harmful (removing lowers the loss)"), ("neighbour", "nearest by input distance")):
            rows = sorted(groups.get(kind, []), key=lambda f: f.rank)
            cards = []
            for f in rows:
                found = load_example(train, f) if train is not None else None
                uri = thumbnail(found[0]) if (found is not None and train.is_image) else None
                cards.append(_card(uri, [ctx.locator(f.example_index), str(ctx.class_name(f.label)), f"{(f.payload or {}).get('influence', f.score):.3g}"]))
            parts.append(f"<p>{_e(title)}</p><div class='grid'>{''.join(cards) or '<span class=muted>none</span>'}</div>")
    return "".join(parts)


def _table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v))


def _domain_mismatch(findings, summary) -> str:
    parts = ["<h2>Diagnosis</h2><ul>" + "".join(f"<li>{_e(s)}</li>" for s in summary.get("sentences", [])) + "</ul>"]
    groups = [dict(f.payload, rank=f.rank) for f in findings if f.kind == "group"]
    if groups:
        parts.append("<h2>Groups</h2>" + _table(sorted(groups, key=lambda r: r["rank"]), ["rank", "group", "n_train", "n_test", "influence_share", "concentration", "thin_ratio", "test_accuracy"]))
    ex = [dict(f.payload, rank=f.rank, row=f.example_index, label=f.label) for f in findings if f.kind == "example"]
    if ex:
        parts.append("<h2>Most influential training examples</h2>" + _table(sorted(ex, key=lambda r: r["rank"]), ["rank", "row", "label", "group", "influence", "influence_share"]))
    feats = [dict(f.payload, rank=f.rank) for f in findings if f.kind == "feature"]
    if feats:
        parts.append("<h2>Features</h2>" + _table(sorted(feats, key=lambda r: r["rank"]), ["rank", "feature", "influence_per_std", "direction"]))
    return "".join(parts)


def _attack(findings, summary, audit_id: int, settings: Settings) -> str:
    art = artifacts_dir(settings) / f"audit-{audit_id}"
    parts = [
        f"<h2>Success</h2><p>{summary.get('n_flipped')} of {summary.get('n_targets')} targets flipped "
        f"(budget {summary.get('budget')} training image(s), step {summary.get('step_grey_levels')} grey levels, "
        f"{summary.get('iterations')} iterations); largest pixel change {summary.get('max_abs_change', 0):.3f} grey levels "
        "(below 0.5: every perturbed image rounds back to the stored 8-bit bytes).</p>"
    ]
    targets = sorted((f for f in findings if f.kind == "target"), key=lambda f: f.rank)
    rows = [dict(f.payload) for f in targets]
    parts.append(_table(rows, ["target_index", "target_label", "pred_before", "pred_after", "flipped", "conf_before", "conf_after", "other_test_acc_before", "other_test_acc_after", "max_abs_change"]))
    parts.append("<h2>Gallery: original | perturbed | difference (amplified)</h2>")
    for f in targets:
        png = (f.payload or {}).get("png_path")
        if png and (art / png).exists():
            parts.append(f"<p>target {f.payload['target_index']} ({'flipped' if f.payload.get('flipped') else 'not flipped'})</p><img style='image-rendering:pixelated;max-width:100%' src='{png_data_uri((art / png).read_bytes())}'>")
    return "".join(parts)


def build_report(
    session: Session, audit_id: int, truth: Path | None = None, top: int = 40, *, settings: Settings
) -> str:
    """The audit's HTML page; its data sets are read and its artifacts found as `settings` say."""
    data = DataOptions.from_settings(settings)
    audit = audit_store.get_audit(session, audit_id)
    if audit.status != "succeeded":
        raise AuditorError(f"audit {audit_id} is {audit.status}; a report needs a succeeded audit")
    findings = finding_store.list_findings(session, audit_id)
    ctx = audit_context(session, audit_id, [f.example_index for f in findings[:top]] if audit.kind == "label-check" else [f.example_index for f in findings])
    summary = audit.summary or {}
    try:
        train = load_dataset_source(audit.dataset, data=data)
    except DataError:
        train = None  # the source moved: report without thumbnails
    test = None
    if audit.test_dataset is not None:
        try:
            test = load_dataset_source(audit.test_dataset, data=data)
        except DataError:
            test = None
    head = (
        f"<h1>auditor: {_e(audit.kind)} audit {audit.id} of {_e(audit.dataset.name)}</h1>"
        f"<p class='muted'>snapshot {audit.snapshot_id}, {len(findings)} findings, finished {_e(audit.finished_at)}; "
        f"params <code>{_e(json.dumps(audit.params))}</code></p>"
    )
    if audit.kind == "label-check":
        rank_by = (summary or {}).get("rank_by") or (audit.params or {}).get("rank_by") or "auto"
        body = _label_check(findings, train, _truth(truth), top, rank_by, ctx)
        if (summary or {}).get("rank_by_reason"):
            body = f"<p>Ranked by {_e(rank_by)}: {_e(summary['rank_by_reason'])}.</p>" + body
    elif audit.kind == "explain":
        body = _explain(findings, train, test, ctx)
    elif audit.kind == "domain-mismatch":
        body = _domain_mismatch(findings, summary)
    elif audit.kind == "attack":
        body = _attack(findings, summary, audit_id, settings)
    else:
        body = ""
    summ = f"<h2>Summary</h2><pre>{_e(json.dumps(summary, indent=1, default=str)[:6000])}</pre>"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>audit {audit.id}</title><style>{CSS}</style></head><body>{head}{body}{summ}</body></html>"
