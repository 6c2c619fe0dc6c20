"""The gateway's OpenAPI 3.1 document, served at ``GET /openapi.json``.

The request bodies are the JSON schemas of the very pydantic models that validate requests at the
edge (``gateway.openai_api``), so the document cannot drift from what the gateway accepts. Every
error answer has the OpenAI shape with a stable ``code``. Fuzzers (schemathesis) and client
generators work from it.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from gateway.openai_api import MAX_STOP_STRINGS, ChatCompletionRequest, CompletionRequest

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": "string"},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}
_ERRORS = {
    "400": "The request is malformed or refused by the content policy",
    "401": "Missing or invalid bearer token",
    "403": "The policy does not allow this request",
    "404": "Unknown model",
    "413": "The body is too large",
    "429": "A rate limit or budget is exhausted (see Retry-After)",
    # Never expected: anything unforeseen becomes this generic answer (the details stay in the log).
    "500": "Internal error",
    "502": "The worker failed",
    "503": "No worker, guard or audit log is available",
}
# One server-sent event as clients parse it (Open API 3.1 has the schema of a stream describe each
# event). ``data`` is a JSON chunk, or ``[DONE]`` at the end.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
# What the field validators check (check_stop_strings, check_one_prompt) has no JSON Schema of its
# own; spelled out here so that every body the document allows passes the edge's validation.
STOP_STRING = {"type": "string", "minLength": 1, "maxLength": 256}
STOP = {
    "anyOf": [
        STOP_STRING,
        {"type": "array", "items": STOP_STRING, "maxItems": MAX_STOP_STRINGS},
        {"type": "null"},
    ],
    "default": None,
    "title": "Stop",
}
PROMPT = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
    ],
    "title": "Prompt",
}


def _error_responses() -> dict[str, Any]:
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {status: {"description": text, "content": body} for status, text in _ERRORS.items()}


def _completion(operation: str, summary: str, schema: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation,
            "summary": summary,
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
            },
            "responses": {
                "200": {
                    "description": "The answer, whole (JSON) or streamed (server-sent events)",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": SSE_EVENT},
                    },
                },
                **_error_responses(),
            },
        }
    }


def openapi_document(version: str) -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(ChatCompletionRequest, "validation"), (CompletionRequest, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    components: dict[str, Any] = dict(schemas.get("$defs", {}))
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        components[name]["properties"]["stop"] = STOP
    components["CompletionRequest"]["properties"]["prompt"] = PROMPT
    components["Error"] = ERROR
    status = {"description": "Status", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Warden gateway", "version": version},
        "paths": {
            "/v1/chat/completions": _completion(
                "createChatCompletion", "Chat completion", "ChatCompletionRequest"
            ),
            "/v1/completions": _completion("createCompletion", "Text completion", "CompletionRequest"),
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "The models the caller may use",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {
                            "description": "Model list",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_error_responses(),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapiDocument",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": status["content"]}},
                }
            },
            "/healthz": {"get": {"operationId": "liveness", "responses": {"200": status}}},
            "/readyz": {"get": {"operationId": "readiness", "responses": {"200": status, "503": status}}},
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
