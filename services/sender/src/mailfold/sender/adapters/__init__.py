"""I/O of the sender: NATS KV state, the object store, DNS, SMTP delivery and submission."""
