"""The local web app of ``saesteer serve``: playground, sweep browser, feature pages and their JSON API.

* ``app``: ``create_app(steerer, results_dirs, ...)`` (FastAPI) from the routers below; the OpenAPI schema
  (``python -m saesteer.web.app`` prints it; ``docs/openapi.json``).
* ``routes_page``, ``routes_steering``, ``routes_browse``: the endpoints, one router each.
* ``jobs``: model work of a request on the worker, cancelled at the time limit or when the client leaves.
* ``errors``, ``middleware``: error answers (422/503/504), body limit, security headers.
* ``schemas``, ``schemas_browse``: request and response models (pydantic).
* ``service``: what the endpoints ask of the model, SAE, sweep and compare modules.
* ``worker``: the bounded single-thread model queue (503 when full, 504 past the time limit).
* ``results_format``, ``results_db``, ``results_index``: sweep results folders, indexed in SQLite for
  search, sorting and pagination.

Needs the ``web`` extra: ``pip install -e '.[web]'``.
"""
