"""How work reaches the sender: the JetStream pull consumer of EmailComposed."""
