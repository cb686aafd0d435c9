"""Proposers turn the current best train.py into one candidate change."""
