"""I/O: the buffered publisher (its batches go out through `bus.publish_batch`)."""
