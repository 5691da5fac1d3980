"""Mutation testing for this repo: one mutant at a time, in a private copy, in a fresh pytest.

mutmut forks a process that already holds torch's thread pool and hangs; this runner starts a
new interpreter per mutant instead. Entry point: `make mutation` (or `python scripts/mutation`).
"""
