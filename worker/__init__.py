"""The worker daemon (an RQ worker) and the runners that execute one candidate."""
