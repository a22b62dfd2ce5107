"""Preference data: reading, normalising, tokenizing and batching pairs."""
