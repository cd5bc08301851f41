"""What an audit kind brings to be split over workers (cleanlab's `IssueManager` shape: each
issue type brings its own `find_issues` and `collect_info`; here each kind its shard hooks).

`auditor.shards` runs the lifecycle (one fit, N shards, the rendezvous in the database, the
global re-rank) and calls these hooks through `get_kind(audit.kind).sharding()`; it knows no
kind by name. A kind declares its hooks in the registry (`AuditKind.shard_hooks`, a
"module:attribute" path imported only when a sharded audit runs), so this module stays light.

The order of calls for an audit split into `count` shards:

1. `fit_shared(inp, progress)` once, before the shards are sent: fit what every shard shares
   (the trained model, the curvature) into `inp.cache`, so that no shard fits its own.
2. `score_shard(inp, index, count)` in each shard: the findings of that shard's rows, with
   provisional ranks (`auditor.shards.rerank` makes them global once all are stored).
3. In the shard that completes the audit, after the re-rank: `finish_top(settings)` names the
   findings of the global top that `finish(inp, rows)` adds to (their payloads, by example
   index), and `merge_summary` turns the completing shard's summary into the audit's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from auditor.analyses.base import AnalysisInput, AnalysisResult, Progress

# (example_index, example_key, rank, label, payload) of one stored finding
StoredRow = tuple[int, str, int, "int | None", dict[str, Any]]


class ShardHooks:
    """A kind's hooks for a sharded run. The defaults share nothing, finish nothing, and keep
    the completing shard's summary with the counts of the whole audit."""

    def fit_shared(self, inp: AnalysisInput, progress: Progress) -> dict[str, Any]:
        """Fit, once, what every shard shares into `inp.cache`; what was fitted (for the log)."""
        return {"shared": False}

    def score_shard(self, inp: AnalysisInput, index: int, count: int) -> AnalysisResult:
        """The findings of shard `index` of `count` (ranks provisional)."""
        raise NotImplementedError(f"{type(self).__name__} does not score shards")

    def finish_top(self, settings: Any) -> tuple[str, int]:
        """(finding kind, how many): the global top findings `finish` adds to; 0 for none."""
        return "", 0

    def finish(self, inp: AnalysisInput, rows: list[int]) -> dict[int, dict[str, Any]]:
        """Payload additions for the global top findings (example indices `rows`, best first)."""
        return {}

    def flagged_kind(self) -> str:
        """The finding kind whose stored rows `flag` reads; "" for a kind that flags nothing
        after its shards (each shard's flags are then final)."""
        return ""

    def flag(self, n: int, rows: Iterable[StoredRow]) -> tuple[list[str], dict[str, Any]] | None:
        """From the `n` stored findings of `flagged_kind` (in example order), what needs every
        row: the keys to flag and the summary's additions; None where the stored rows cannot
        say (nothing is flagged then)."""
        return None

    def merge_summary(
        self, summary: dict[str, Any], *, n: int, shards: int, finished: int
    ) -> dict[str, Any]:
        """The audit's summary from the completing shard's: `n` findings from `shards` shards,
        `finished` of them given payload additions by `finish`."""
        return {**summary, "n": n, "shards": shards}
