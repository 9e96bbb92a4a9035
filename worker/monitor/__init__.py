"""Watching the predictions after they are written: drift, live accuracy and the data behind the report."""
