"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing path, empty dataset). Never a bug."""


class ConfigError(UserError):
    """A config key has a wrong name, type or value."""

    def __init__(self, key: str, problem: str, fix: str | None = None):
        self.key = key
        fix = fix or f"fix it in the YAML file or override it with {key}=VALUE"
        super().__init__(f"config key '{key}': {problem} ({fix})")


def user_message(exc: UserError) -> str:
    """The user's one line, also when the error was raised inside a Ray actor or task: Ray
    re-raises it wrapped (the wrapper's text carries a traceback), with the original as `.cause`."""
    while isinstance(getattr(exc, "cause", None), UserError):
        exc = exc.cause
    return exc.args[0] if exc.args else str(exc)


class NonFiniteError(UserError):
    """A NaN or inf reward, loss or gradient: the batch is skipped or the run stopped (ppo.on_nonfinite)."""


class StaleRolloutError(RuntimeError):
    """Rollouts sampled with an adapter further behind the learner than ppo.max_policy_lag allows."""


class StaleGeneratorError(RuntimeError):
    """A generator sampled with (or confirmed) an adapter other than the expected one."""
