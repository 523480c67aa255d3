"""The one exception type users see for bad configuration or input."""


class ConfigError(ValueError):
    """A bad config key, value or input path. The message is one line naming the key and what is allowed."""

    def __init__(self, key: str, problem: str, allowed=None):
        self.key, self.problem, self.allowed = key, problem, allowed
        message = f"{key}: {problem}" if key else problem
        if allowed is not None:
            allowed_text = ", ".join(map(str, allowed)) if not isinstance(allowed, str) else allowed
            message += f" (allowed: {allowed_text})"
        super().__init__(message)


def is_finite_number(value) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_range(key: str, value, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise a one-line ConfigError naming `key` unless `value` is a finite number in the interval."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    ok = is_finite_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(key, f"must be a number in {interval}, got {value!r}")
