"""Liveness and the OpenAPI 3 document."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from api.context import db, settings
from hematovision.store.models import CELL_ID_MAX, ID_PATTERN

bp = Blueprint("health", __name__)

_ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema: dict[str, Any] | None = None, media: str = "application/json") -> dict[str, Any]:
    body: dict[str, Any] = {"description": description}
    if schema is not None:
        body["content"] = {media: {"schema": schema}}
    return body


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _resp("error", _ERROR) for c in codes}


def _id_param(name: str) -> dict[str, Any]:
    """A batch, slide or job id in the path (another shape: 404)."""
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": f"^{ID_PATTERN}$"}}


#: A cell id in the path: a positive 64-bit integer (another shape: 404).
_CELL_ID_PARAM = {
    "name": "cell_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "format": "int64", "minimum": 1, "maximum": CELL_ID_MAX},
}


def _json_body(required: str, example_props: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "required": [required], "properties": example_props}}
        },
    }


def _workflow_paths() -> dict[str, Any]:
    """The review workflow's endpoints (api/workflow.py)."""
    slide, text = _id_param("slide_id"), {"type": "string", "maxLength": 2000}
    code = {
        "name": "code",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
    }
    comments = {"type": "object", "required": ["comments"]}
    return {
        "/api/v1/slides/{slide_id}/flags/{code}/ack": {
            "post": {
                "operationId": "acknowledgeFlag",
                "summary": "Acknowledge a flag raised on the slide with a comment (a logged-in person); sign-off is "
                "refused (409, naming the codes) while a raised flag has no acknowledgement",
                "parameters": [slide, code],
                "requestBody": _json_body("comment", {"comment": text}),
                "responses": {
                    "201": _resp("acknowledged", {"type": "object", "required": ["acknowledgement", "unacknowledged"]}),
                    **_errors(400, 403, 404, 409, 503),
                },
            }
        },
        "/api/v1/slides/{slide_id}/flags/acks": {
            "get": {
                "operationId": "listFlagAcknowledgements",
                "summary": "The acknowledgements of the report's current version and the flags still without one",
                "parameters": [slide],
                "responses": {
                    "200": _resp("acknowledgements", {"type": "object", "required": ["acknowledgements"]}),
                    **_errors(404, 503),
                },
            }
        },
        "/api/v1/slides/{slide_id}/comments": {
            "get": {
                "operationId": "listSlideComments",
                "summary": "The slide's comments (slide and cells), oldest first",
                "parameters": [slide],
                "responses": {"200": _resp("comments", comments), **_errors(404, 503)},
            },
            "post": {
                "operationId": "addSlideComment",
                "summary": "Add a comment to the slide (or to one of its cells with cell_id); refused once signed off",
                "parameters": [slide],
                "requestBody": _json_body("text", {"text": text, "cell_id": {"type": "integer"}}),
                "responses": {
                    "201": _resp("added", {"type": "object", "required": ["comment"]}),
                    **_errors(400, 404, 409),
                },
            },
        },
        "/api/v1/cells/{cell_id}/comments": {
            "get": {
                "operationId": "listCellComments",
                "summary": "One cell's comments",
                "parameters": [_CELL_ID_PARAM],
                "responses": {"200": _resp("comments", comments), **_errors(404, 503)},
            },
            "post": {
                "operationId": "addCellComment",
                "summary": "Add a comment to one cell",
                "parameters": [_CELL_ID_PARAM],
                "requestBody": _json_body("text", {"text": text}),
                "responses": {
                    "201": _resp("added", {"type": "object", "required": ["comment"]}),
                    **_errors(400, 404, 409),
                },
            },
        },
        "/api/v1/slides/{slide_id}/amend": {
            "post": {
                "operationId": "amendSlide",
                "summary": "Re-open a signed-off slide as a new report version (a technologist or pathologist, with a "
                "reason); the released report is kept and the next release is a corrected result (HL7 C)",
                "parameters": [slide],
                "requestBody": _json_body("reason", {"reason": {"type": "string", "maxLength": 1000}}),
                "responses": {
                    "200": _resp("amended", {"type": "object", "required": ["version", "amendment"]}),
                    **_errors(400, 403, 404, 409, 503),
                },
            }
        },
        "/api/v1/slides/{slide_id}/versions": {
            "get": {
                "operationId": "listReportVersions",
                "summary": "The slide's superseded report versions (released, then amended) and the current one",
                "parameters": [slide],
                "responses": {"200": _resp("versions", {"type": "object", "required": ["superseded"]}), **_errors(404)},
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    submit_props = {
        "name": {"type": "string"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        "mpp": {"type": "number", "minimum": 0.01, "maximum": 100},
        "wbc_per_l": {"type": "number", "minimum": 1e8, "maximum": 5e11, "deprecated": True},
        "paths": {"type": "array", "items": {"type": "string"}},
        "slides": {"type": "array", "items": {"$ref": "#/components/schemas/SlideOrder"}},
        "worklist": {"type": "string", "format": "binary", "description": "multipart: a worklist CSV"},
        "census": {
            "type": "boolean",
            "description": "whole-smear census of every slide (multipart: true/false/1/0); another value is 400",
        },
    }
    order_props: dict[str, Any] = {
        "file": {"type": "string"},
        "path": {"type": "string"},
        "accession": {"type": "string", "maxLength": 64},
        "patient_id": {"type": "string", "maxLength": 64},
        "assigning_authority": {"type": "string", "maxLength": 64},
        "birth_date": {"type": "string", "format": "date"},
        "age_years": {"type": "number", "minimum": 0, "maximum": 130},
        "sex": {"type": "string", "enum": ["F", "M", "O", "U"]},
        "collected_at": {"type": "string", "format": "date-time"},
        "wbc_10e9_per_l": {"type": "number", "minimum": 0.1, "maximum": 500},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "HematoVision intake API", "version": "1"},
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "The database, the broker (down: still 200, submissions are accepted) and the "
                    "upload folder (writable, free space); 503 when the database or the upload folder is unusable",
                    "responses": {
                        "200": _resp("ok or degraded", {"$ref": "#/components/schemas/Health"}),
                        **_errors(503),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus text format: requests, latency, jobs by state, queue depth per stage",
                    "responses": {"200": _resp("metrics", {"type": "string"}, "text/plain"), **_errors(401, 403)},
                }
            },
            "/api/v1/batches": {
                "get": {
                    "operationId": "listBatches",
                    "summary": "The most recent batches with state and progress",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                        }
                    ],
                    "responses": {
                        "200": _resp("batches", {"type": "object", "required": ["batches"]}),
                        **_errors(400, 503),
                    },
                },
                "post": {
                    "operationId": "submitBatch",
                    "summary": "Submit slides (multipart uploads and/or server-side paths below the import root)",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 200},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        **{k: v for k, v in submit_props.items() if k != "paths"},
                                        "paths": {"type": "array", "items": {"type": "string"}},
                                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                                    },
                                }
                            },
                            "application/json": {"schema": {"type": "object", "properties": submit_props}},
                        },
                    },
                    "responses": {
                        "202": _resp("accepted", {"$ref": "#/components/schemas/Batch"}),
                        "200": _resp(
                            "duplicate submission (same Idempotency-Key and submission, same API key)",
                            {"$ref": "#/components/schemas/Batch"},
                        ),
                        **_errors(400, 401, 403, 409, 413, 422, 503),
                    },
                },
            },
            "/api/v1/batches/{batch_id}": {
                "get": {
                    "operationId": "getBatch",
                    "parameters": [_id_param("batch_id")],
                    "responses": {"200": _resp("batch", {"$ref": "#/components/schemas/Batch"}), **_errors(404, 503)},
                }
            },
            "/api/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "parameters": [_id_param("job_id")],
                    "responses": {"200": _resp("job", {"$ref": "#/components/schemas/Job"}), **_errors(404, 503)},
                }
            },
            "/api/v1/jobs/{job_id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "parameters": [_id_param("job_id")],
                    "responses": {
                        "200": _resp("cancelled", {"$ref": "#/components/schemas/Job"}),
                        **_errors(404, 409, 503),
                    },
                }
            },
            "/api/v1/queues": {
                "get": {
                    "operationId": "getQueues",
                    "summary": "Per stage (prepare, classify, report): its queue, slides waiting, running "
                    "(fresh heartbeat), stale (heartbeat too old), queued in the database, stranded (stale + "
                    "queued beyond the messages waiting) and demand = waiting + running + stranded (for autoscalers)",
                    "responses": {"200": _resp("stage load", {"$ref": "#/components/schemas/Queues"}), **_errors(503)},
                }
            },
            "/api/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "The model registry: versions (SHA-256 of model.keras, path, parent, training data "
                    "hash, validation verdict, status registered/promoted/retired, who promoted it and when), "
                    "the promoted one, and the promotion/rollback history (newest first)",
                    "responses": {
                        "200": _resp("registry", {"type": "object", "required": ["promoted", "models", "history"]}),
                        **_errors(401, 403, 503),
                    },
                }
            },
            "/api/v1/slides": {
                "get": {
                    "operationId": "findSlides",
                    "summary": "The slides of an accession (?accession=), newest first",
                    "parameters": [
                        {"name": "accession", "in": "query", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "slides"}, **_errors(400, 503)},
                }
            },
            "/api/v1/slides/{slide_id}": {
                "get": {
                    "operationId": "getSlide",
                    "summary": "A slide's order, patient and state",
                    "parameters": [_id_param("slide_id")],
                    "responses": {"200": {"description": "slide"}, **_errors(404, 503)},
                },
                "patch": {
                    "operationId": "patchSlide",
                    "summary": "Correct the slide's order and patient before sign-off (audited; 409 after sign-off)",
                    "parameters": [_id_param("slide_id")],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {k: v for k, v in order_props.items() if k not in ("file", "path")},
                                }
                            }
                        }
                    },
                    "responses": {"200": {"description": "slide"}, **_errors(400, 404, 409, 422, 503)},
                },
            },
            "/api/v1/slides/{slide_id}/report": {
                "get": {
                    "operationId": "getReport",
                    "summary": "The slide report: JSON, CSV, PDF (with overview and cell gallery) or HL7 v2.5 ORU^R01",
                    "parameters": [
                        _id_param("slide_id"),
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "default": "json", "enum": ["json", "csv", "pdf", "hl7"]},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "report",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Report"}},
                                "text/csv": {"schema": {"type": "string"}},
                                "application/pdf": {"schema": {"type": "string", "format": "binary"}},
                                "x-application/hl7-v2+er7": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(400, 404, 409, 503),
                    },
                }
            },
            "/api/v1/slides/{slide_id}/sampling-map": {
                "get": {
                    "operationId": "getSamplingMap",
                    "summary": "PNG map of the fields the differential was read from (thumbnail + field rectangles)",
                    "parameters": [_id_param("slide_id")],
                    "responses": {
                        "200": {
                            "description": "map",
                            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **_errors(404, 409, 503),
                    },
                }
            },
            "/api/v1/flags": {
                "get": {
                    "operationId": "getFlags",
                    "summary": "The leukemia-flag report: flagged slides, most severe first (JSON, CSV or PDF)",
                    "parameters": [
                        {
                            "name": "batch",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "pattern": f"^{ID_PATTERN}$"},
                        },
                        {
                            "name": "since",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "format": "date-time"},
                        },
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "default": "json", "enum": ["json", "csv", "pdf"]},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "flagged slides, most severe first",
                            "content": {
                                "application/json": {"schema": {"type": "object"}},
                                "text/csv": {"schema": {"type": "string"}},
                                "application/pdf": {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
                        **_errors(400, 404, 503),
                    },
                }
            },
            "/api/v1/slides/{slide_id}/cells": {
                "get": {
                    "operationId": "getSlideCells",
                    "summary": "The slide's detected cells (white cells by default), with labels and review state",
                    "parameters": [
                        _id_param("slide_id"),
                        {
                            "name": "kind",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "default": "wbc", "enum": ["wbc", "rbc", "platelet", "all"]},
                        },
                        {
                            "name": "label",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 50},
                        },
                    ],
                    "responses": {
                        "200": _resp("cells", {"type": "object", "required": ["slide_id", "cells"]}),
                        **_errors(400, 404, 503),
                    },
                }
            },
            "/api/v1/cells/{cell_id}/label": {
                "post": {
                    "operationId": "reclassifyCell",
                    "summary": "Reclassify a white cell (a person, or a key of scope review or admin); answers the "
                    "recomputed differential",
                    "parameters": [_CELL_ID_PARAM],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["label"],
                                    "properties": {"label": {"type": "string"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _resp(
                            "the cell and the slide's new differential and flags",
                            {"type": "object", "required": ["cell", "differential", "flags"]},
                        ),
                        **_errors(400, 404, 409, 503),
                    },
                }
            },
            "/api/v1/slides/{slide_id}/census": {
                "post": {
                    "operationId": "queueCensus",
                    "summary": "Count all cells: queue the slide again as a whole-smear census (a new job; the "
                    "current results stay until the census stores its own). 409 while its job is queued or "
                    "running, or once it is signed off",
                    "parameters": [_id_param("slide_id")],
                    "responses": {
                        "202": _resp("queued", {"$ref": "#/components/schemas/Job"}),
                        **_errors(404, 409, 503),
                    },
                }
            },
            "/api/v1/slides/{slide_id}/signoff": {
                "post": {
                    "operationId": "signOffSlide",
                    "summary": "Electronic signature: a logged-in person (session + CSRF token, never an API key) "
                    "re-enters their password; records who, when and the meaning; read-only afterwards. 409 while "
                    "cells are unidentified",
                    "parameters": [_id_param("slide_id")],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["password"],
                                    "properties": {"password": {"type": "string"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _resp(
                            "signed off",
                            {
                                "type": "object",
                                "required": ["verified_by", "verified_by_id", "verified_at", "signature"],
                            },
                        ),
                        **_errors(400, 401, 403, 404, 409, 503),
                    },
                }
            },
            **_workflow_paths(),
            "/api/v1/slides/{slide_id}/audit": {
                "get": {
                    "operationId": "getSlideAudit",
                    "summary": "The slide's audit history, oldest first: reclassifications, sign-off, reads and "
                    "exports, refused attempts",
                    "parameters": [
                        _id_param("slide_id"),
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 500},
                        },
                    ],
                    "responses": {
                        "200": _resp("audit entries", {"type": "object", "required": ["slide_id", "entries"]}),
                        **_errors(400, 401, 403, 404, 503),
                    },
                }
            },
            "/api/v1/slides/{slide_id}/dzi": {
                "get": {
                    "operationId": "getSlideDzi",
                    "summary": "DeepZoom descriptor of the slide image",
                    "parameters": [_id_param("slide_id")],
                    "responses": {"200": _resp("DZI", {"type": "string"}, "application/xml"), **_errors(404, 503)},
                }
            },
            "/api/v1/slides/{slide_id}/tiles/{level}/{col}_{row}.jpeg": {
                "get": {
                    "operationId": "getSlideTile",
                    "summary": "One DeepZoom tile (JPEG)",
                    "parameters": [_id_param("slide_id")]
                    + [
                        {"name": n, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
                        for n in ("level", "col", "row")
                    ],
                    "responses": {
                        "200": _resp("tile", {"type": "string", "format": "binary"}, "image/jpeg"),
                        **_errors(404, 503),
                    },
                }
            },
            "/api/v1/cells/{cell_id}/image": {
                "get": {
                    "operationId": "getCellImage",
                    "summary": "The cell cut from the slide (JPEG)",
                    "parameters": [_CELL_ID_PARAM],
                    "responses": {
                        "200": _resp("cell image", {"type": "string", "format": "binary"}, "image/jpeg"),
                        **_errors(404, 503),
                    },
                }
            },
            "/api/v1/openapi.json": {"get": {"operationId": "openapi", "responses": {"200": _resp("this document")}}},
        },
        "components": {
            "schemas": {
                "SlideOrder": {"type": "object", "additionalProperties": False, "properties": order_props},
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
                "Job": {
                    "type": "object",
                    "required": ["id", "state", "progress"],
                    "properties": {
                        "id": {"type": "string"},
                        "slide_id": {"type": "string"},
                        "batch_id": {"type": "string"},
                        "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
                        "progress": {"type": "number", "minimum": 0, "maximum": 1},
                        "stage": {"type": "string", "nullable": True, "enum": ["prepare", "classify", "report", None]},
                        "stages": {"type": "object", "description": "per stage: runs, worker, seconds of its last run"},
                        "census": {"type": "boolean", "description": "queued as a whole-smear census"},
                        "error": {"type": "string", "nullable": True},
                        "created_at": {"type": "string", "nullable": True},
                        "started_at": {"type": "string", "nullable": True},
                        "finished_at": {"type": "string", "nullable": True},
                        "duration_s": {"type": "number", "nullable": True},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "database", "broker", "uploads"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
                        "database": {"type": "string", "enum": ["ok", "down"]},
                        "broker": {"type": "string", "enum": ["ok", "down"]},
                        "uploads": {
                            "type": "object",
                            "properties": {
                                "writable": {"type": "boolean"},
                                "free_mb": {"type": "integer", "nullable": True},
                            },
                        },
                    },
                },
                "Queues": {
                    "type": "object",
                    "required": ["stages"],
                    "properties": {
                        "broker_reachable": {"type": "boolean"},
                        "stale_after_s": {"type": "integer"},
                        "stages": {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {
                                    "queue": {"type": "string"},
                                    "waiting": {"type": "integer", "nullable": True},
                                    "running": {"type": "integer"},
                                    "stale": {"type": "integer"},
                                    "queued": {"type": "integer"},
                                    "stranded": {"type": "integer"},
                                    "demand": {"type": "integer", "nullable": True},
                                },
                            },
                        },
                    },
                },
                "Batch": {
                    "type": "object",
                    "required": ["id", "job_ids"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string", "nullable": True},
                        "priority": {"type": "integer"},
                        "state": {"type": "string"},
                        "progress": {"type": "number"},
                        "job_ids": {"type": "array", "items": {"type": "string"}},
                        "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                        "queued": {
                            "type": "boolean",
                            "description": "202 only: the jobs reached the broker now (false: the broker is "
                            "down and they are queued when it returns)",
                        },
                        "duplicate": {"type": "boolean", "description": "200 only: the Idempotency-Key's batch"},
                        "notices": {
                            "type": "array",
                            "description": "202 only: slides the model new slides get now was not validated on as "
                            "the file stores them or at their scale (outcome outside: the report will carry the code "
                            "and be held for review) or that a check could not judge (outcome not_judged, with why); "
                            "the slides are analysed all the same",
                            "items": {
                                "type": "object",
                                "required": ["slide", "check", "outcome", "message"],
                                "properties": {
                                    "slide": {"type": "string"},
                                    "check": {"type": "string", "enum": ["storage", "scale"]},
                                    "model": {"type": "string", "nullable": True},
                                    "outcome": {"type": "string", "enum": ["outside", "not_judged"]},
                                    "code": {"type": "string"},
                                    "severity": {"type": "string"},
                                    "message": {"type": "string"},
                                    "evidence": {"type": "object"},
                                },
                            },
                        },
                    },
                },
                "Report": {
                    "type": "object",
                    "required": ["slide_id", "status", "model", "counts", "differential", "flags"],
                    "properties": {
                        "slide_id": {"type": "string"},
                        "status": {"type": "string"},
                        "mpp": {"type": "number"},
                        "model": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                        },
                        "counts": {
                            "type": "object",
                            "properties": {
                                "wbc": {"type": "integer", "description": "classified white cells (the denominator)"},
                                "wbc_seen": {"type": "integer", "description": "classified + unidentified"},
                                "unidentified": {"type": "integer"},
                                "rbc": {"type": "integer"},
                                "platelets": {"type": "integer"},
                            },
                        },
                        "unidentified_percent": {
                            "type": "number",
                            "nullable": True,
                            "description": "unidentified cells, percent of all white cells seen",
                        },
                        "absolute_10e9_per_l": {
                            "type": "object",
                            "nullable": True,
                            "description": "per class: value and 95% CI in 10^9/L (when a WBC count was given)",
                        },
                        "rare_event_detection_limit_pct": {
                            "type": "number",
                            "nullable": True,
                            "description": "smallest population (percent) seen at least once with 95% probability "
                            "among the classified white cells: 100 * (1 - 0.05^(1/n))",
                        },
                        "sampling": {
                            "type": "object",
                            "nullable": True,
                            "description": "where the cells were read: method, fields_read, area_read_mm2, "
                            "monolayer_area_mm2, fields [[x, y, w, h], ...] in level-0 pixels",
                        },
                        "estimates": {
                            "type": "object",
                            "nullable": True,
                            "description": "smear estimates wbc and platelets: method, value, unit, ci95 (and per mm2, "
                            "per 100 RBC, per field)",
                        },
                        "rules_not_evaluated": {
                            "type": "array",
                            "description": "rules that could not run, and why: no flag is not a negative result",
                            "items": {
                                "type": "object",
                                "properties": {"rule": {"type": "string"}, "reason": {"type": "string"}},
                            },
                        },
                        "rules_version": {"type": "string"},
                        "rules_sha256": {"type": "string", "description": "SHA-256 of the effective rules"},
                        "differential": {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {
                                    "count": {"type": "integer"},
                                    "percent": {"type": "number"},
                                    "ci95": {"type": "array", "items": {"type": "number"}},
                                },
                            },
                        },
                        "flags": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "code": {"type": "string"},
                                    "severity": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            }
        },
    }


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The database, the broker and the upload folder. 503 when the database or the upload folder is
    unusable (nothing can be accepted); 200 with ``broker: down`` when only the broker is away
    (submissions are accepted and queued when it returns)."""
    from sqlalchemy.exc import SQLAlchemyError

    from hematovision.service.queueing import broker_reachable
    from hematovision.service.submission import upload_storage

    cfg = settings()
    try:
        db().execute(text("SELECT 1"))
        database = "ok"
    except SQLAlchemyError:
        db().rollback()
        database = "down"
    uploads = upload_storage(cfg.upload_dir)
    broker = "ok" if broker_reachable(cfg) else "down"
    body: dict[str, Any] = {"database": database, "broker": broker, "uploads": uploads}
    if database == "down" or not uploads["writable"]:
        code, message = (
            ("database_unavailable", "the results database is unavailable; retry later")
            if database == "down"
            else ("upload_storage_unavailable", "the upload folder is not writable")
        )
        resp = jsonify({"error": {"code": code, "message": message}, "status": "unavailable", **body})
        resp.status_code = 503
        return resp
    return jsonify({"status": "ok" if broker == "ok" else "degraded", **body})


@bp.get("/api/v1/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(openapi_document())
