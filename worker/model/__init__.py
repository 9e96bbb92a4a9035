"""The trip-duration model: its features, training and promotion, the MLflow registry with the per-process model cache, and evaluation on real trips."""
