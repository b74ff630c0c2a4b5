"""The registered models: ``create_model(name, num_classes=..., in_chans=...)``, ``list_models()``.

The registry itself lives in ``_registry``; the first use of one of its names here imports the
model modules, which registers them. ``inputs`` (the input contract, no torch) imports without
them, so a process that serves an ONNX graph never loads torch. Adding a model: a new module
here with a ``@register_model`` builder, and its name in the import line below.
"""

__all__ = ["ModelEntry", "adapt_input_conv", "body_of", "count_parameters", "create_model", "get_model_entry",
           "head_of", "list_models", "register_model"]


def __getattr__(name: str):
    if name in __all__:
        from fashionclf.models import _registry, bncnn, cnn, mobilenet  # noqa: F401  (registers the models)

        return getattr(_registry, name)
    raise AttributeError(f"module 'fashionclf.models' has no attribute {name!r}")
