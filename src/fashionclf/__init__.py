"""fashionclf: train, evaluate and deploy clothing-image classifiers.

The Python API (``fashionclf.api``), for notebooks and scripts::

    import fashionclf
    run = fashionclf.train(recipe="fast")            # a run folder: metrics, plots, model.pt
    model = fashionclf.load(run.folder)              # or any model.pt / model.onnx
    model.predict(["photo.jpg"])                     # labels, confidences, unknown items
    model.evaluate().plot_confusion_matrix()

Its names are loaded on first use, so ``import fashionclf`` (and the command line) stays
free of torch until a function is called.
"""

from fashionclf._version import __version__

API = ("train", "audit", "load", "load_dataset", "plot_sample_grid", "TrainedRun", "Model", "Predictions")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        from fashionclf import api

        return getattr(api, name)
    raise AttributeError(f"module 'fashionclf' has no attribute {name!r}")
