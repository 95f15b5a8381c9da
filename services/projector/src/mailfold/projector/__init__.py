"""mailfold projector service."""
