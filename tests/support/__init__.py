"""Helpers shared by the test files: small pretraining configs and CLI
runs, 127.0.0.1 clusters of worker processes, a distributed custom loop."""
