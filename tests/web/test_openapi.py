"""/openapi.json is kept true: every route is documented, real responses match the schemas."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
from aiohttp import web

from relay.web import openapi
from tests.support import Harness


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        found.add((route.method.lower(), re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)))
    return found


def doc_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }


def check(doc: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    response = doc["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    # Resolve the document's $refs against the document itself.
    jsonschema.Draft202012Validator({"components": doc["components"], **schema}).validate(body)


async def test_every_route_is_documented_and_every_documented_route_exists(
    harness: Harness,
) -> None:
    async with harness.session.get(f"{harness.http}/openapi.json") as resp:
        doc = await resp.json()
    assert doc == _roundtrip(openapi.document())
    jsonschema.Draft202012Validator.check_schema({"components": doc["components"]})
    assert app_routes(harness.relay.web_app) == doc_routes(doc)


def _roundtrip(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


async def test_real_responses_match_their_schemas(harness: Harness) -> None:
    doc = _roundtrip(openapi.document())
    http = harness.session
    body = {"stream_id": "doc", "engine": "aliyun", "task_id": "asr-doc", "auth_key": "k"}
    async with http.post(f"{harness.http}/v1/streams", json=body) as resp:
        check(doc, "/v1/streams", "post", resp.status, await resp.json())
    async with http.post(f"{harness.http}/v1/streams", json=body) as resp:
        check(doc, "/v1/streams", "post", resp.status, await resp.json())  # 409
    async with http.post(f"{harness.http}/v1/streams", json={"stream_id": ""}) as resp:
        check(doc, "/v1/streams", "post", resp.status, await resp.json())  # 400
    async with http.get(f"{harness.http}/v1/streams") as resp:
        check(doc, "/v1/streams", "get", resp.status, await resp.json())
    async with http.get(f"{harness.http}/v1/streams/doc") as resp:
        check(doc, "/v1/streams/{stream_id}", "get", resp.status, await resp.json())
    async with http.get(f"{harness.http}/v1/streams/none") as resp:
        check(doc, "/v1/streams/{stream_id}", "get", resp.status, await resp.json())
    async with http.delete(f"{harness.http}/v1/streams/doc") as resp:
        check(doc, "/v1/streams/{stream_id}", "delete", resp.status, await resp.json())
    async with http.post(f"{harness.http}/v1/callbacks/aliyun/x", data=b"{}") as resp:
        check(doc, "/v1/callbacks/aliyun/{token}", "post", resp.status, await resp.json())
    for path in ("/healthz", "/readyz"):
        async with http.get(f"{harness.http}{path}") as resp:
            check(doc, path, "get", resp.status, await resp.json())
