"""The review web app (`auditor serve`): server-rendered pages and a JSON API in one FastAPI app.

`app.create_app()` builds it over the same store and library functions the CLI uses; pages are
Jinja2 templates with a little plain JavaScript for keyboard triage, so there is no front-end
build step.
"""
