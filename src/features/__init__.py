"""Feature sets; importing registers them."""

from src.features import ta_basic, talib_set  # noqa: F401
