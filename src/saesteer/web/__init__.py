"""The local web app of ``saesteer serve``: playground, sweep browser, feature pages and their JSON API.

* ``app``: ``create_app(steerer, results_dirs, queue_size=..., request_timeout=...)`` (FastAPI), the page's
  static files, the OpenAPI schema (``python -m saesteer.web.app`` prints it; ``docs/openapi.json``).
* ``schemas``: request and response models (pydantic).
* ``service``: what the endpoints ask of the model, SAE, sweep and compare modules.
* ``worker``: the bounded single-thread model queue (503 when full, 504 past the time limit).
* ``results_index``: sweep results folders, indexed for search, sorting and pagination.

Needs the ``web`` extra: ``pip install -e '.[web]'``.
"""
