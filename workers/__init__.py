"""Celery workers: the app with its reliability settings, and thin tasks over `auditor.runner`."""
