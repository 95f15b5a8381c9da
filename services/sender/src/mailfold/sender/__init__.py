"""mailfold sender service."""
