"""I/O for the ingest service: NATS JetStream (events, KV, object store) and in-memory fakes."""
