"""Entry module for Celery's own command line, e.g. a GPU worker:
``celery -A workers.main worker -Q slides.classify`` (``hematovision worker --stages classify``)."""

from hematovision.core.settings import load_settings
from workers.celery_app import create_worker_app

app = create_worker_app(load_settings())
