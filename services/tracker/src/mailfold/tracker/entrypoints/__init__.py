"""HTTP entrypoints: the pixel and redirect routes as a small ASGI app, with /healthz and /metrics."""
