"""Dataset adapters: files on disk -> `Examples` with stable content keys."""

from auditor.data.base import Examples
from auditor.data.load import FORMATS, load_examples

__all__ = ["FORMATS", "Examples", "load_examples"]
