"""The person in the loop: ``fashionclf review QUEUE --model MODEL.pt``, a local web page over
a queue of photos (a ``predict --review`` folder, an audit CSV, any folder of photos) where a
person decides each photo's values by keyboard or in bulk, every decision written at once to
a decisions manifest that ``train --data`` reads beside the shop's data.

``queue`` reads a queue into cards (the model's suggestions and the queue's score),
``decisions`` keeps the manifest, ``app`` is the page's FastAPI app (the service's hardening).
May import: data, inference, service (its hardening and settings), and the shared modules.
"""
