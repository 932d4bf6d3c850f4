"""Cell analysis core: detection, the transfer-learning classifier, training and evaluation.

Works on images and arrays; knows nothing of Flask, Celery or the database.
"""
