"""Handlers of the webhooks service: fan-out, delivery attempts, endpoint management, replay."""
