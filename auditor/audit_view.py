"""An audit's summary as a person reads it: which model, solver and damping it used and why, the
ranking and why, the training, the estimate of wrong labels, and a re-ranking note.

Views only: they take an audit document (`auditor.audits.audit_doc`, with its summary) and
format; they read nothing. The audit page, the audit list and the CLI share them, so an audit
is described the same way wherever it is shown, and two audits of one data set can be told
apart by model, solver and date (`audit_label`).
"""

from __future__ import annotations

from typing import Any

from auditor.findings_view import score_label


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def model_name(doc: dict[str, Any]) -> str | None:
    """The model an audit ran with: the summary's (what ran), else the request's."""
    model = _dict(_dict(doc.get("summary")).get("model")) or _dict(
        _dict(doc.get("params")).get("model")
    )
    return model.get("name")


def solver_name(doc: dict[str, Any]) -> str | None:
    """The solver that ran (the summary's curvature), else the one requested ("auto")."""
    summary = _dict(doc.get("summary"))
    ran = _dict(summary.get("curvature")).get("solver") or _dict(summary.get("solver")).get(
        "solver"
    )
    return ran or _dict(_dict(doc.get("params")).get("solver")).get("name")


def audit_label(doc: dict[str, Any]) -> str:
    """One line that tells two audits of the same data set apart: "logreg · direct · 2026-12-04
    10:31"."""
    when = (doc.get("created_at") or "")[:16].replace("T", " ")
    return " · ".join(p for p in (model_name(doc), solver_name(doc), when) if p)


def estimate_line(summary: dict[str, Any] | None) -> str | None:
    """ "estimated 180 (160-205) wrong labels; 200 flagged", from the summary's `estimate`."""
    est = _dict(_dict(summary).get("estimate"))
    if not est or est.get("count") is None:
        return None
    line = f"estimated {est['count']:,} ({est.get('low', '?'):,}\u2013{est.get('high', '?'):,}) wrong labels"
    if est.get("flagged") is not None:
        line += f"; {est['flagged']:,} flagged"
    return line


def estimate_pairs(
    summary: dict[str, Any] | None, class_name: Any = str, top: int = 8
) -> list[str]:
    """The estimate's largest (given -> suggested) class pairs, "7 → 1: 12"."""
    pairs = _dict(_dict(summary).get("estimate")).get("pairs") or []
    shown = sorted(
        (p for p in pairs if isinstance(p, dict)), key=lambda p: -int(p.get("count") or 0)
    )[:top]
    return [
        f"{class_name(p.get('given'))} \u2192 {class_name(p.get('suggested'))}: {p.get('count')}"
        for p in shown
    ]


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_facts(doc: dict[str, Any]) -> list[dict[str, str]]:
    """The audit's summary as (what, value, why) rows, most telling first; keys a kind does not
    report are left out, and anything unknown is shown plainly rather than hidden."""
    summary = _dict(doc.get("summary"))
    facts: list[dict[str, str]] = []

    def add(what: str, value: Any, why: Any = None) -> None:
        if value not in (None, "", {}):
            facts.append({"what": what, "value": _number(value), "why": str(why or "")})

    line = estimate_line(summary)
    if line:
        est = _dict(summary.get("estimate"))
        add("estimate", line, f"{est.get('method', '')}; {int(100 * float(est.get('interval', 0.95)))}% interval"
            + (f", over {est['evaluated_rows']:,} rows" if est.get("evaluated_rows") else ""))  # fmt: skip
    model = _dict(summary.get("model")) or _dict(_dict(doc.get("params")).get("model"))
    if model:
        extra = []
        if model.get("weights"):
            extra.append(f"weights {model['weights']}")
        if model.get("train_fn"):
            extra.append(f"trained by {model['train_fn']}")
        elif model.get("train") is False:
            extra.append("given weights, not trained")
        if model.get("params") not in (None, "all"):
            extra.append(f"parameters: {model['params']}")
        add("model", model.get("name"), ", ".join(extra))
    training = _dict(summary.get("training"))
    if training:
        if training.get("trained") is False:
            add("training", "none", "the model's own weights were used")
        else:
            parts = [
                f"{k.replace('_', ' ')} {_number(training[k])}"
                for k in ("iterations", "adam_epochs", "loss", "grad_norm")
                if training.get(k) not in (None, 0)
            ]
            add(
                "training",
                ", ".join(parts),
                "reused from an earlier audit" if training.get("reused") else "",
            )
    curvature = _dict(summary.get("curvature")) or _dict(summary.get("solver"))
    if curvature:
        counted = _dict(curvature.get("parameters"))
        solver_why = curvature.get("solver_reason") or ""
        if counted.get("counted") is not None:
            solver_why += (
                f"; {counted['counted']:,} of {counted.get('total', '?'):,} parameters counted"
            )
        if curvature.get("reused"):
            solver_why += "; reused from an earlier audit"
        add("solver", curvature.get("solver"), solver_why.strip("; "))
        add("damping", curvature.get("damping"), curvature.get("damping_reason"))
    if summary.get("rank_by"):
        requested = summary.get("rank_by_requested")
        value = f"{summary['rank_by']} ({score_label(summary['rank_by'])})"
        if requested and requested != summary["rank_by"]:
            value += f", chosen by {requested}"
        add("ranking", value, summary.get("rank_by_reason"))
    if summary.get("train_agreement") is not None:
        add(
            "training agreement",
            f"{100 * float(summary['train_agreement']):.1f}% of given labels predicted",
        )
    rerank = summary.get("rerank")
    if isinstance(rerank, dict) and rerank:
        note = rerank.get("note") or rerank.get("reason") or rerank.get("message")
        when = rerank.get("at") or rerank.get("reranked_at")
        rest = ", ".join(
            f"{k} {_number(v)}"
            for k, v in rerank.items()
            if k not in ("note", "reason", "message", "at", "reranked_at")
            and not isinstance(v, (dict, list))
        )
        add(
            "re-ranking",
            (f"re-ranked {str(when)[:16].replace('T', ' ')}" if when else "re-ranked")
            + (f": {rest}" if rest else ""),
            note,
        )
    elif isinstance(rerank, str):
        add("re-ranking", rerank)
    if summary.get("why_top") is not None:
        n = int(summary["why_top"])
        add("why lists", f"for {n:,} finding{'s' * (n != 1)}, best-ranked first")
    known = {"estimate", "model", "training", "curvature", "solver", "rank_by", "rank_by_requested", "rank_by_reason",
             "train_agreement", "rerank", "why_top", "n", "train_disagreements", "phase"}  # fmt: skip
    for key, value in summary.items():  # other kinds (verify, explain, ...): their plain numbers
        if key in known:
            continue
        if isinstance(value, (int, float, str, bool)):
            add(key.replace("_", " "), value)
        elif isinstance(value, dict):  # e.g. a verify's before / after: its scalar entries
            flat = ", ".join(
                f"{k.replace('_', ' ')} {_number(v)}"
                for k, v in value.items()
                if isinstance(v, (int, float, str, bool))
            )
            add(key.replace("_", " "), flat)
    return facts
