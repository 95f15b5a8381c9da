"""How work reaches the webhooks service: the MAIL_EVENTS subscriber, the delivery loops, HTTP."""
