"""Inference: a trained model, used.

``checkpoint`` (the self-describing model file, its checks), ``classifier`` (PyTorch and
ONNX Runtime behind one ``Classifier``), ``export`` (ONNX), ``quantize`` (int8),
``tagging`` (photos to rows, a batch at a time), ``predict`` (``fashionclf predict``: inputs
walked, rows written, the review folder).

May import: ``models``, ``data``, ``evaluation``, ``training.config`` and
``training.results`` (a checkpoint's own data, for int8 calibration), ``scale.cluster``
(``predict --dask``, imported when asked) and the shared modules. Not the service or the CLI.
"""
