"""Environment profiles: ``ENV=development | staging | production`` loads ``.env.$ENV``, then
``.env``, into the process environment before Hydra composes (a variable already set in the
environment wins; ``.env.$ENV`` wins over ``.env``). Every variable the project reads is listed,
one line each, in ``.env.example``; secrets there (``EXCHANGE_API_*``, ``RLTRADE_API_TOKEN``) are
read from the environment only, never logged or written to MLflow (src/tracking/mlflow_run.py).
"""

import os
from pathlib import Path

from dotenv import load_dotenv

PROFILES = ("development", "staging", "production")


def load_environment(root: Path = Path(".")) -> list[Path]:
    """Load the profile's files that exist; returns them in the order loaded."""
    profile = os.environ.get("ENV")
    if profile and profile not in PROFILES:
        raise SystemExit(f"error: ENV={profile!r}; valid: {', '.join(PROFILES)} (or unset: .env only)")
    loaded = []
    for path in ([root / f".env.{profile}"] if profile else []) + [root / ".env"]:
        if path.is_file():
            load_dotenv(path, override=False)
            loaded.append(path)
    return loaded
