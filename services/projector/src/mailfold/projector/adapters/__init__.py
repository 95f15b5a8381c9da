"""I/O of the projector: PostgreSQL (asyncpg) and NATS JetStream."""
