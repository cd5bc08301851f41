"""Field types for the API's request bodies: text the store cannot hold and values it should
not guess at are refused before a route runs, in one line.

- `UserName`, `Note`: a control character in a name or a NUL in a note reached PostgreSQL,
  which refused it mid-transaction (a 503). The shared checks of `auditor.datasets` raise a
  `DataError`, which is not a `ValueError`, so pydantic lets it through to the app's handler
  for domain errors: a 400 with the one line, like any other bad value.
- `ClassRef`: a class index or a class name, strictly. Pydantic's lax `int` turned `true` into
  class 1 and `1.0` into class 1; a strict union answers them with a 422.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StrictInt, StrictStr

from auditor.datasets import check_free_text, check_lookup_name

NOTE_MAX = 2000


def _user_name(name: str) -> str:
    check_lookup_name(name, "user")
    return name


def _note(note: str) -> str:
    check_free_text(note, "the note")
    return note


UserName = Annotated[str, AfterValidator(_user_name)]
Note = Annotated[str, Field(max_length=NOTE_MAX), AfterValidator(_note)]
ClassRef = StrictInt | StrictStr
Whole = StrictInt  # a count, id or version: true/false and 2.0 are not one
