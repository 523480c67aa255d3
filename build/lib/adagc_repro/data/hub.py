"""Reaching the Hugging Face hub without ever hanging: probe once, go offline when unreachable."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from functools import cache

from adagc_repro.errors import ConfigError

_HUB_HOST = ("huggingface.co", 443)


@cache
def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    result = []

    def probe():
        try:
            socket.create_connection(_HUB_HOST, timeout=timeout).close()
            result.append(True)
        except (OSError, ConnectionError):
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # DNS itself has no timeout: bound it here
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def go_offline() -> None:
    """Make transformers/datasets/huggingface_hub use their caches only, for the rest of the process."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    import huggingface_hub.constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True
    with contextlib.suppress(ImportError, AttributeError):
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
        datasets.config.HF_DATASETS_OFFLINE = True


@contextlib.contextmanager
def offline_guard(key: str, name: str):
    """Load `name` from the hub or the cache; if neither has it, one clear ConfigError naming `key`."""
    if os.path.exists(name):
        yield
        return
    if not hub_reachable():
        go_offline()
    try:
        yield
    except ConfigError:
        raise
    except Exception as exc:
        where = "the hub is unreachable and it is not in the local cache" if not hub_reachable() else str(exc).splitlines()[0]
        raise ConfigError(key, f"cannot load '{name}': {where}") from exc
