"""Data: what a model learns from and is scored on, turned into arrays.

``fashion_mnist`` (the IDX files: found, fetched, verified, parsed; ``Dataset`` and its
splits), ``photo_folders`` (a shop's class folders, split folders and CSV manifests, the
conversion cache, dirty-data checks), ``sources`` (what ``--data`` points at, the one entry
point), ``photos`` (one photo, from any file, to a model's input), ``cutout`` (the item found
on its backdrop), ``attributes`` (several attributes per photo: ``Schema`` and the label matrix).

May import: ``fashionclf.errors``, ``fashionclf.fileio``, ``fashionclf.evaluation.plots``
(sample grids). Nothing of training, inference or the service.
"""
