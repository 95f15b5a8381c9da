"""What the webhooks service talks to: NATS KV and JetStream, the endpoints over HTTP, DNS."""
