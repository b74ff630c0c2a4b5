"""Evaluation: numbers computed once, drawn and shown separately.

``metrics`` (``EvalResult``: predictions and the metrics derived from them, the overfitting
check, the evaluation files), ``ood`` (calibration, the unknown-item threshold and its
figures), ``attributes`` (a model of several attributes: masked losses, ``AttributeResults``),
``plots`` (``plot_*(result, ax=None)``), ``report`` (report.html).

May import: ``models.contract``, ``data.photos`` (non-garment test images), ``data.attributes``
and the shared
modules at the top. Not training, inference or the service.
"""
