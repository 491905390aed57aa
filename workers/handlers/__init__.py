"""One handler per job kind (workers.handlers.registry), each given only what it needs (workers.handlers.base)."""
