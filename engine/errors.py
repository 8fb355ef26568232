"""Errors a user can act on. Their text is shown to the member as-is, so it says what was wrong and
what to do. Anything else escaping the engine is a bug and is reported as one."""


class UserError(Exception):
    pass


class NotFound(UserError):
    pass


class Invalid(UserError):
    pass


class Forbidden(UserError):
    pass


class LimitReached(UserError):
    pass


class SetupError(UserError):
    """The server owner's set-up is wrong (data folder, database version); the text says how to fix it."""
