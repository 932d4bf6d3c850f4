"""``/api/v1/models``: the model registry (versions with SHA-256, parent, training data hash,
validation verdict, status, who promoted them and when; the promotion history). Read-only: models
are registered, promoted and rolled back with ``hematovision models`` on the server."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from api.context import db
from hematovision.service.model_registry import registry_json

bp = Blueprint("registry", __name__, url_prefix="/api/v1")


@bp.get("/models")
def list_models() -> ResponseReturnValue:
    return jsonify(registry_json(db()))
