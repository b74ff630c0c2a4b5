"""The HTTP service: ``serve`` (FastAPI app, limits, API key, metrics) and ``web/index.html``.

May import: ``inference``, ``data.photos``, ``models.contract``, ``training.config`` (shared
constants) and the shared modules. Nothing imports it but the CLI.
"""
