"""Orchestration of one composed email: checks, limits, delivery, outcomes; ports passed in."""
