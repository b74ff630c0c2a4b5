"""The registered models: ``create_model(name, num_classes=..., in_chans=...)``, ``list_models()``.

The registry itself lives in ``_registry``; importing this package imports the model modules,
which registers them. Adding a model: a new module here with a ``@register_model`` builder,
and its name in the import line below.
"""

from fashionclf.models import bncnn, cnn, mobilenet  # noqa: F401  (registers the models)
from fashionclf.models._registry import (
                        ModelEntry,
                        adapt_input_conv,
                        body_of,
                        count_parameters,
                        create_model,
                        get_model_entry,
                        head_of,
                        list_models,
                        register_model,
)

__all__ = ["ModelEntry", "adapt_input_conv", "body_of", "count_parameters", "create_model", "get_model_entry", "head_of", "list_models",
           "register_model"]
