"""The research loop: propose, validate, record, enqueue, decide. Never imports torch."""
