"""The insights file (``shopformer insights RUN -o FILE``) as the dashboard reads it: parsed once,
re-read when its modification time changes, never computed in the serving process."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopformer.serving.dashboard.overview import utc

log = logging.getLogger(__name__)
HOW = "run `shopformer insights RUN -o insights.json` and serve with --dashboard-insights insights.json"


@dataclass
class Insights:
    path: Path | None
    _stamp: tuple[int, int] | None = None
    _data: dict[str, Any] = field(default_factory=dict)
    _error: str | None = None

    def load(self) -> tuple[dict[str, Any], str | None]:
        """(data, None) or ({}, why there is none)."""
        if self.path is None:
            return {}, f"no insights file configured: {HOW}"
        try:
            st = self.path.stat()
        except OSError:
            return {}, f"insights file {self.path.name} not found: {HOW}"
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                data = json.loads(self.path.read_text())
                if not isinstance(data, dict) or data.get("format") != 1:
                    raise ValueError("not an insights file of format 1")
                self._data, self._error = data, None
            except (OSError, ValueError) as err:
                log.warning("insights file %s: %s", self.path, err)
                self._data, self._error = {}, f"insights file {self.path.name} unreadable ({err}); {HOW}"
        return self._data, self._error

    def part(self, name: str) -> tuple[dict[str, Any], str | None]:
        data, err = self.load()
        if err:
            return {}, err
        part = data.get(name)
        if not isinstance(part, dict):
            return {}, f"the insights file has no {name.replace('_', ' ')} (written by an older version?)"
        if part.get("error"):
            return {}, f"{name.replace('_', ' ')} not available: {part['error']}"
        return part, None

    def period_labels(self) -> list[str]:
        data, _ = self.load()
        starts = data.get("period_starts") or []
        h = data.get("horizon_seconds") or 86400
        fmt = "%m-%d" if h >= 86400 else "%m-%d %H:%M"
        return [utc(t + h, fmt) for t in starts]  # each period is labelled by its end

    def stale_for(self, version: str) -> str | None:
        """A warning when the file was computed for another model version."""
        data, _ = self.load()
        made_for = data.get("model_version")
        if made_for and made_for != version:
            return f"insights were computed for model {made_for}, the service now serves {version}"
        return None
