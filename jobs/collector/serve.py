"""``lakehouse serve``: the collector app under uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

from jobs.runtime.errors import ConfigError
from jobs.runtime.settings import Settings


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("the collector needs its extra: pip install 'email-lakehouse[collector]'") from None
    from jobs.collector.app import create_app

    if port is not None:
        settings = settings.model_copy(update={"collector": settings.collector.model_copy(update={"port": port})})
    config = settings.collector
    app = create_app(settings)  # a credential missing from the environment fails here, before binding
    uvicorn.run(app, host=host or config.host, port=config.port, log_level="warning", access_log=False,
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=10)
