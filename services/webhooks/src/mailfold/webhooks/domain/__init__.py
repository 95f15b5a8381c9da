"""Pure decisions of webhook delivery: endpoints, signatures, retries, payloads, addresses."""
