"""The hand-held side: `python -m worker COMMAND`, the `make run` launcher, dispatching, status and the benchmark."""
