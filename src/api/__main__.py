"""``python -m src.api``: serve the API with uvicorn on 127.0.0.1:$RLTRADE_API_PORT (8000).

``RLTRADE_API_HOST`` may name another address only when ``RLTRADE_API_TOKEN`` is set (the token
then guards every mutating endpoint).
"""

import ipaddress
import os
import sys

import uvicorn

from src.api.app import create_app
from src.settings import load_environment


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main() -> None:
    load_environment()
    host = os.environ.get("RLTRADE_API_HOST", "127.0.0.1")
    port = int(os.environ.get("RLTRADE_API_PORT", "8000"))
    if not is_loopback(host) and not os.environ.get("RLTRADE_API_TOKEN"):
        sys.exit(f"error: RLTRADE_API_HOST={host} is beyond loopback; set RLTRADE_API_TOKEN first")
    uvicorn.run(create_app(), host=host, port=port, log_level="info")


if __name__ == "__main__":
    main()
