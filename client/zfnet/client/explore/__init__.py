"""``zfclient explore``: a model explorer in the browser, one more client of the gRPC service.

- :mod:`~zfnet.client.explore.reports`: finished ``zfclient top`` reports read back (pure, no gRPC);
- :mod:`~zfnet.client.explore.pictures`: the PNGs the pages show (Pillow);
- :mod:`~zfnet.client.explore.explorer`: what the pages ask, answered through a :class:`~zfnet.client.api.Client`;
- :mod:`~zfnet.client.explore.app`: the Starlette app (JSON and PNG endpoints, the static pages) and its uvicorn server;
- ``static/``: the pages, plain HTML, CSS and JavaScript modules (no build step, nothing from the network).

It never imports the engine (``zfnet.server``): it works against a remote ``zfserver`` exactly as
against the in-process one.
"""
