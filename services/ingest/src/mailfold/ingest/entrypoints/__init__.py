"""Where requests come in: the HTTP API and the SMTP server; they decode, call a handler, encode."""
