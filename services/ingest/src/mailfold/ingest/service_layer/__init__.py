"""Orchestration: handlers that take their ports as parameters and call the domain."""
