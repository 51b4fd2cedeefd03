"""relay: a live caption relay daemon."""

__version__ = "0.1.0"
