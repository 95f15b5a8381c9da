"""Ways in: the stream consumer and the HTTP query API."""
