"""Glue for training frameworks, each module importing its framework on first use.

``deo.integrations.lightning``: ``DEOCallback``, checks that refuse Lightning settings which
would corrupt DEO's probe (``pip install "deo[lightning]"``).
``deo.integrations.transformers``: ``DEOTrainer``, a ``transformers.Trainer`` that gives DEO
the closure the Trainer does not pass (``pip install "deo[transformers]"``).

Nothing here is imported by ``import deo``: the core depends on torch alone.
"""
