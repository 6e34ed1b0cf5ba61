"""Exchange credentials from the environment or ``.env``: never logged, never in a config."""

import os
from pathlib import Path

from dotenv import dotenv_values

KEY_VARIABLES = ("EXCHANGE_API_KEY", "EXCHANGE_API_SECRET")


def exchange_credentials(env_file: Path = Path(".env")) -> dict[str, str]:
    """ccxt's ``apiKey``/``secret`` from $EXCHANGE_API_KEY/$EXCHANGE_API_SECRET (or ``.env``);
    empty when unset: public endpoints such as OHLCV need none."""
    from_file = dotenv_values(env_file) if env_file.is_file() else {}
    key, secret = (os.environ.get(name) or from_file.get(name) for name in KEY_VARIABLES)
    return {"apiKey": key, "secret": secret} if key and secret else {}


def redact(text: str, credentials: dict[str, str]) -> str:
    """``text`` with every credential value replaced by ***."""
    for value in credentials.values():
        if value:
            text = text.replace(value, "***")
    return text
