"""A reviewed-data-set builder for the review tests: an ImageFolder of 28x28 digits whose folders
are class names and a tenth of whose labels are flipped, audited by a real label check.

The label check runs once per test module into a template database; each test gets a copy (a
SQLite file copy, or PostgreSQL's CREATE DATABASE ... TEMPLATE), so tests can decide freely
without seeing each other's decisions.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import torch
from helpers import cli
from PIL import Image
from sklearn.datasets import load_digits

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5"


def write_digit_folder(root: Path, n: int = 200, seed: int = 0) -> np.ndarray:
    """`root/<class name>/img00042.png` 28x28 uint8 digits; returns the flipped rows."""
    d = load_digits()
    x = torch.tensor(d.images[:n] / 16.0 * 255, dtype=torch.float32)[:, None]
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    pixels = x.round().clamp(0, 255).to(torch.uint8).numpy()
    y = d.target[:n].copy()
    rng = np.random.default_rng(seed)
    flipped = rng.choice(n, n // 10, replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, 10, len(flipped))) % 10
    for i in range(n):
        path = root / CLASS_NAMES[y[i]] / f"img{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(path)
    return flipped


@dataclass
class Template:
    """A database holding one succeeded label-check audit (id `audit_id`) of data set `dataset`."""

    kind: str  # "sqlite" | "postgres"
    url: str
    folder: Path
    audit_id: int
    dataset: str = "digits"

    def copy(self, where: Path) -> str:
        """A fresh database with the template's content; its URL."""
        if self.kind == "sqlite":
            path = where / f"copy-{secrets.token_hex(4)}.db"
            shutil.copy(self.url.removeprefix("sqlite:///"), path)
            return f"sqlite:///{path}"
        name = f"auditor_test_{secrets.token_hex(6)}"
        template = self.url.rsplit("/", 1)[1]
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop(url: str) -> None:
    from auditor.store import dispose_engines

    dispose_engines()
    if url.startswith("postgresql"):
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def build_template(kind: str, where: Path, n: int = 200) -> Template:
    """Write the folder, register it and run a real label check (in process) into a new DB."""
    folder = where / "digits"
    write_digit_folder(folder, n)
    if kind == "sqlite":
        url = f"sqlite:///{where / 'template.db'}"
    else:
        name = f"auditor_tmpl_{secrets.token_hex(6)}"
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    saved = {k: os.environ.get(k) for k in ("AUDITOR_HOME", "AUDITOR_DATABASE_URL")}
    os.environ["AUDITOR_HOME"] = str(where / "home")
    os.environ["AUDITOR_DATABASE_URL"] = url
    try:
        cli("db", "upgrade")
        cli("dataset", "add", "digits", str(folder), "--json")
        audit = cli("audit", "run", "label-check", "digits", "--why-top", "20", "--json")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        from auditor.store import dispose_engines

        dispose_engines()  # a PostgreSQL template must have no open connection to be copied
    return Template(kind, url, folder, audit["id"])
