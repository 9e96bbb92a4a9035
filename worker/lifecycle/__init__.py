"""Keeping the model good: every alias move on the record, promotion and rollback, retraining on what the service observed, and a challenger tried on live batches."""
