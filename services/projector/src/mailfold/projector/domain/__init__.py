"""Pure decisions of the projector: what a message is, what a batch folds into, what rows say."""
