"""``lakehouse serve``: the event collector (an ASGI app served by uvicorn).

Events come in over HTTP (``POST /api/events`` with an API key or an OAuth 2.0 token, the
Segment tracking API, the browser's ``collector.js`` and ``/p.gif`` pixel) and leave as NDJSON
landing files under ``{landing.root}/events/collector/``, which ``ingest`` lands in bronze like
any other source. A 2xx answer means the event is fsync'd to such a file.
"""
