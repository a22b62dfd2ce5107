"""Preference data: reading, normalising, tokenizing and batching pairs.

``sources`` (files, hub, presets, mixtures) -> ``jsonl`` / ``formats`` (rows -> `PreferencePair`,
problems in a ``report``) -> ``tokenize`` (+ ``cache``) -> ``collate``; ``validate`` holds the
``dpokit data validate | stats | prepare`` commands.
"""
