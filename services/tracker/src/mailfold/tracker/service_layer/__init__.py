"""Orchestration: handlers that turn a request into an event, with their ports passed in."""
