"""Kubernetes operator for TrainingRun and AnnotationConsumer resources."""
