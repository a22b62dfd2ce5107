"""Preference data: reading, normalising, tokenizing and batching pairs.

``sources`` (``resolve`` a name; ``local`` files, ``hub`` data sets, ``presets``, ``mixture``) ->
``jsonl`` / ``formats`` (+ ``fields``, ``implicit``: rows -> `PreferencePair`, problems in a ``report``) -> ``tokenize`` (+ ``cache``) -> ``collate``. The ``dpokit data validate | stats |
prepare`` commands are in ``dpokit.datacmd``.
"""
