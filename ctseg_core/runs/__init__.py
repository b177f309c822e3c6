"""The run folder contract: its files, status, run states, listing and ranking checkpoints.

The one interface between training and everything that watches it (the dashboard, the CLI, a
cluster job on a shared file system); see the README's "The run folder".
"""
