"""Dampings chosen by `validate --metric lds --sweep-damping`, kept for later audits of the same
model on the same data set.

Why a record: the sweep costs S retrains; its answer holds for the model and data it was made
on. `validate` writes it to `AUDITOR_HOME/dampings.json` (the caller passes the home) under a key made of the data set (its
registered name, or the resolved path) and every model setting that changes the curvature
(model, weights, weight decay, counted parameters, training); an audit created later with no
`--damping` and the same key uses it (`audits.create_audit`, so `audit run|enqueue` and each
scheduled scan alike), and says so.
Any other setting, or a `--damping`, wins.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FILE = "dampings.json"
_KEY_FIELDS = ("name", "weights", "weight_decay", "params", "train", "train_fn", "hidden")


def model_key(dataset: str, model: dict[str, Any]) -> str:
    """The record's key: the data set and the model settings that shape the curvature."""
    doc = {"dataset": dataset, **{f: model.get(f) for f in _KEY_FIELDS}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read(home: Path) -> dict[str, Any]:
    try:
        doc = json.loads((home / FILE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def record(dataset: str, model: dict[str, Any], damping: float, lds: float, solver: str, *, home: Path) -> None:
    """Keep the chosen damping in `home` (written atomically: a reader never sees half a file)."""
    doc = _read(home)
    doc[model_key(dataset, model)] = {
        "dataset": dataset,
        "model": model.get("name"),
        "damping": float(damping),
        "lds": float(lds),
        "solver": solver,
        "chosen_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = home / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def lookup(dataset: str, model: dict[str, Any], *, home: Path) -> dict[str, Any] | None:
    """The recorded choice for this data set and model in `home`, if any."""
    return _read(home).get(model_key(dataset, model))


def apply_recorded(dataset: str, params: dict[str, Any], *, home: Path) -> dict[str, Any] | None:
    """Fill in the damping recorded (in `home`) for this data set and model when `params` (nested,
    as the CLI and schedules record them) give none; returns the record used, or None."""
    from auditor.analyses.settings import parse_specs

    solver = params.get("solver")
    if not isinstance(solver, dict) or solver.get("damping") is not None:
        return None
    model, _ = parse_specs(params)  # every field, defaults filled, as validate records them
    chosen = lookup(dataset, model.to_dict(), home=home)
    if chosen is not None:
        solver["damping"] = chosen["damping"]
    return chosen
