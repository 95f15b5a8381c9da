"""Pure decisions of the tracker: who is a machine, which address to keep, where a click may go."""
