"""Orchestration: batches through the fold into one transaction; replay, verify, audit, export."""
