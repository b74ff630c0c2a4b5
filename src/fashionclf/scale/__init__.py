"""Beyond one machine: ``tune`` (Optuna studies shared by workers) and ``cluster`` (tagging on
a Dask cluster). Optional: their engines come with ``pip install 'fashionclf[scale]'`` and are
imported only when these run.

May import: ``training``, ``inference`` and the shared modules. Nothing imports it but the
CLI and ``inference.predict`` (``--dask``, when asked).
"""
