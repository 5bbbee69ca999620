"""Typed config schemas and the value checks run before any MLflow run is created."""
