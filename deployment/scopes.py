"""Scope lists as given on the command line, and whole-name scope matching."""


def split_scopes(scopes):
    """``'a, b/c/'`` or ``['a', 'b/c']`` -> ``['a', 'b/c']``; None or '' -> []."""
    if not scopes:
        return []
    if isinstance(scopes, str):
        scopes = scopes.split(",")
    return [scope.strip().rstrip("/") for scope in scopes if scope.strip()]


def in_scope(name, scope):
    """Whether op name ``name`` is ``scope`` itself or inside it (``conv1`` does not contain ``conv10``)."""
    return name == scope or name.startswith(scope + "/")
