"""Feature sets; importing registers them."""
from src.features import ta_basic  # noqa: F401
