"""I/O: IMAP, POP3, NATS KV state, the bounce parser."""
