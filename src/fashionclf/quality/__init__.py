"""Data quality: ``fashionclf audit``, which labels of a set are probably wrong and which
photos are near-duplicates or outliers. ``confident`` (confident learning, numpy only),
``folds`` (out-of-sample answers from K training runs), ``find`` (``audit``: the suspects),
``result`` (``Suspect``, ``AuditResult``), ``report`` (their CSV and report.html).

May import: ``training``, ``inference``, ``evaluation``, ``data``, ``models`` and the shared
modules. Nothing imports it but the CLI and the Python API.
"""
