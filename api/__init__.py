"""Flask intake API (app factory in :mod:`api.app`)."""
