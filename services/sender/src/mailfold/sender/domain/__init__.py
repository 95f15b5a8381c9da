"""Pure decisions of the sender: addresses, rules before sending, MIME, tracking, retries."""
