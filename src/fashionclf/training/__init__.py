"""Training: the settings and recipes, and everything a run does.

``config`` (``TrainConfig``: every setting, its default and why), ``recipes``, ``fit`` (the
recipe a run follows), ``loop`` (one epoch), ``run`` (the run's state, phases and files),
``budget`` (``--time-budget``), ``results`` (the final evaluation, shared with ``fashionclf
evaluate``), ``rundir`` (which folder is a run, its lock), ``transforms`` (augmentation),
``whitening`` (a whitened first layer), ``ddp`` (torchrun).

May import: ``data``, ``models``, ``evaluation``, ``inference.checkpoint`` and the shared
modules at the top (errors, fileio, device). Not the service, the scale-out or the CLI.
"""
