"""How much the secure front (nginx: TLS + password auth) costs, measured on the real stack.

Run as root from the repository root: `python -m bench.run` (see bench/README.md). Not a test:
it prints one table, writes bench/results/latest.json and bench/results/ratios.png.
"""
