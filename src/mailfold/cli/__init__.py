"""The mailfold command line."""
