"""Pure domain logic of the ingest service: parsing what arrives, with no I/O."""
