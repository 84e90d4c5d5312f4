"""Times as the service reads them: epoch seconds from ISO-8601, epoch numbers (or their text) and MIND's
"11/15/2019 8:55:22 AM"; naive times are UTC. The one parser every layer uses."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from core.errors import InvalidInput

EARLIEST, LATEST = 0.0, 4_102_444_800.0  # 1970 to 2100: anything else is a mistake, not news


def parse_time(value: Any, default: float) -> float:
    """Epoch seconds from an ISO-8601 string or a number; `default` when absent. Naive times are UTC."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidInput(f"bad time {value!r}")
    if isinstance(value, int | float):
        return _plausible(float(value), value)
    with contextlib.suppress(ValueError):  # epoch seconds written as text (a query string, a command line)
        return _plausible(float(value), value)
    try:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        # MIND behaviors use "11/15/2019 8:55:22 AM"
        try:
            parsed = datetime.strptime(str(value).strip(), "%m/%d/%Y %I:%M:%S %p")
        except ValueError:
            raise InvalidInput(f"bad time {value!r}; expected ISO-8601 or epoch seconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return _plausible(parsed.timestamp(), value)


def _plausible(epoch: float, given: Any) -> float:
    if not EARLIEST <= epoch <= LATEST:  # NaN fails this too
        raise InvalidInput(f"bad time {str(given)[:40]!r}; expected a time between 1970 and 2100")
    return epoch
