"""mailfold webhooks: the event stream delivered to other systems' HTTP endpoints, signed and retried."""
