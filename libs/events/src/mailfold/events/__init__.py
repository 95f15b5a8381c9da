"""mailfold event contract: event types, sources, reachability policy, fold, subjects, codecs, tokens."""
