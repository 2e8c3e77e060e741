"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing path, empty dataset). Never a bug."""


class ConfigError(UserError):
    """A config key has a wrong name, type or value."""

    def __init__(self, key: str, problem: str, fix: str | None = None):
        self.key = key
        fix = fix or f"fix it in the YAML file or override it with {key}=VALUE"
        super().__init__(f"config key '{key}': {problem} ({fix})")
