"""Handlers that orchestrate a mailbox sync: folders, workers, leases."""
