"""The CLI's settings: read from the process environment once per command."""

from __future__ import annotations

import os

from core.settings import Settings


def current_settings() -> Settings:
    return Settings.from_environ(os.environ)
