"""mailfold ingest service."""
