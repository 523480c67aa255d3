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
