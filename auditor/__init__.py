"""auditor: data-quality audits of ML training sets with influence functions."""

__version__ = "0.1.0"
