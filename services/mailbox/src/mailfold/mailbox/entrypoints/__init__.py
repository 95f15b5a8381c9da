"""HTTP routes: deletion through the API, health and metrics."""
