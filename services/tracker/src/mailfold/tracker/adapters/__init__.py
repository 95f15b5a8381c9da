"""I/O: the buffered JetStream publisher."""
