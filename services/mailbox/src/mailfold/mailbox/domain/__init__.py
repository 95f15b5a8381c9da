"""Pure decisions: what a mailbox message means, ids, sync state."""
