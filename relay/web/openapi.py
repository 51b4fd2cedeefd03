"""The OpenAPI 3.1 document of the HTTP API, served at ``/openapi.json``.

Schemas come from the pydantic models the handlers validate with; tests/web/test_openapi.py
checks that every route is documented and that real responses match their schemas.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from relay import __version__
from relay.web.models import (
    CreateStream,
    ErrorBody,
    HookAnswer,
    NotReady,
    Ok,
    StreamCreated,
    StreamInfo,
    StreamList,
)

routes = web.RouteTableDef()

_MODELS: tuple[type[BaseModel], ...] = (
    CreateStream,
    StreamCreated,
    StreamInfo,
    StreamList,
    ErrorBody,
    HookAnswer,
    Ok,
    NotReady,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Invalid request (field-level message)",
        401: "Missing or bad credentials",
        403: "Not a loopback client and no control token is set",
        404: "Not found",
        409: "The stream is already captioned",
        413: "Body too large",
        502: "The cloud refused the call (its code and message)",
        503: "The store cannot take it now; retry",
    }
    return {str(s): _json(ErrorBody, text[s]) for s in statuses}


_CONTROL: list[dict[str, list[str]]] = [{"bearer": []}]
_STREAM_ID = {"name": "stream_id", "in": "path", "required": True, "schema": {"type": "string"}}

_HOOK_TOKEN = {
    "name": "token",
    "in": "query",
    "required": False,
    "description": "The control token, for nginx-rtmp which cannot send headers",
    "schema": {"type": "string"},
}
_HOOK_FORM = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "required": ["app", "name"],
                "properties": {"app": {"type": "string"}, "name": {"type": "string"}},
            }
        }
    },
}

PATHS: dict[str, dict[str, Any]] = {
    "/v1/streams": {
        "post": {
            "summary": "Caption a stream: create a task, or attach one created elsewhere",
            "security": _CONTROL,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(CreateStream)}},
            },
            "responses": {
                "201": _json(StreamCreated, "Task registered"),
                **_errors(400, 401, 403, 409, 502, 503),
            },
        },
        "get": {
            "summary": "List streams",
            "security": _CONTROL,
            "responses": {"200": _json(StreamList, "Streams"), **_errors(401, 403, 503)},
        },
    },
    "/v1/streams/{stream_id}": {
        "parameters": [_STREAM_ID],
        "get": {
            "summary": "One stream: state, task, timing and counters",
            "security": _CONTROL,
            "responses": {"200": _json(StreamInfo, "The stream"), **_errors(401, 403, 404, 503)},
        },
        "delete": {
            "summary": "Stop the stream's task; viewers stay connected",
            "security": _CONTROL,
            "responses": {
                "200": _json(StreamInfo, "The stream, its task ended"),
                **_errors(401, 403, 404, 502, 503),
            },
        },
    },
    "/v1/callbacks/aliyun/{token}": {
        "parameters": [
            {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "post": {
            "summary": "Recognition result callback of one task (MD5-signed: SIG-TIME, ASR-SIG)",
            "parameters": [
                {
                    "name": "SIG-TIME",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                },
                {"name": "ASR-SIG", "in": "header", "required": True, "schema": {"type": "string"}},
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": {
                    "description": "Accepted (also for a redelivery, which changes nothing)",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **_errors(400, 401, 404, 413, 503),
            },
        },
    },
    "/v1/hooks/nginx-rtmp/on_publish": {
        "post": {
            "summary": "nginx-rtmp on_publish: start captions for stream `name` (default engine)",
            "security": _CONTROL,
            "parameters": [_HOOK_TOKEN],
            "requestBody": _HOOK_FORM,
            "responses": {
                "200": _json(HookAnswer, "The stream may publish (captions started or not)"),
                **_errors(400, 401, 403),
            },
        },
    },
    "/v1/hooks/nginx-rtmp/on_publish_done": {
        "post": {
            "summary": "nginx-rtmp on_publish_done: stop captions for stream `name`",
            "security": _CONTROL,
            "parameters": [_HOOK_TOKEN],
            "requestBody": _HOOK_FORM,
            "responses": {
                "200": _json(HookAnswer, "Captions stopped (or there were none)"),
                **_errors(400, 401, 403),
            },
        },
    },
    "/healthz": {
        "get": {"summary": "The process is up", "responses": {"200": _json(Ok, "Up")}},
    },
    "/readyz": {
        "get": {
            "summary": "The store is reachable and the engines are loaded",
            "responses": {"200": _json(Ok, "Ready"), "503": _json(NotReady, "Not ready")},
        },
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {"description": "Text exposition format", "content": {"text/plain": {}}}
            },
        },
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}
            },
        },
    },
}


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "relay", "version": __version__},
        "paths": PATHS,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())
