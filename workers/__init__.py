"""Celery workers: the Celery app factory and the thin slide tasks."""
