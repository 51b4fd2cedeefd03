"""The HTTP surface (aiohttp): control API, callback ingestion, health, metrics, OpenAPI."""
