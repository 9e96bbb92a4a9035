"""Flower's options from the project's settings (environment and .env).

Flower loads `flowerconfig.py` from the working directory, so `celery -A worker flower` run from
the repository root listens where FLOWER_ADDRESS and FLOWER_PORT say (127.0.0.1:5555 by default,
where Flower's own default is every interface) and asks for FLOWER_BASIC_AUTH when it is set,
including when it is set only in .env. Command-line options still win.
"""

from worker.settings import get_settings

_settings = get_settings()

address = _settings.FLOWER_ADDRESS
port = _settings.FLOWER_PORT
if _settings.FLOWER_BASIC_AUTH:
    basic_auth = _settings.FLOWER_BASIC_AUTH.split(",")
