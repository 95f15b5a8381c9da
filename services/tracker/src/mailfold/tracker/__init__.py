"""mailfold tracker service."""
