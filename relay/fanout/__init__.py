"""Viewer fan-out: the WebSocket server (``websockets``) and per-stream audiences."""
