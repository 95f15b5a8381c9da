"""Plumbing shared by mailfold services: settings, logging, ops endpoints, NATS, embedded servers."""
