"""The HTTP service: ``settings`` (``ServeSettings``: every flag of ``fashionclf serve``, its
default written once; torch-free, the command line reads it), ``protocol`` (below the app: the
header deadline, the body limit, the API key), ``uploads`` (one request's CPU work within
``Limits``), ``serve`` (the FastAPI app: lifespan, state, response models; ``serve`` runs it)
and ``web/index.html``.

May import: ``inference``, ``data.photos``, ``data.attributes``, ``models.contract``, ``training.config`` (shared
constants) and the shared modules. Nothing imports it but the CLI.
"""
