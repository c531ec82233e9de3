"""Properties written once for every kind that declares them (suites/kinds.py), and what every
property's failure starts with."""


def context(backend, p, prop: str, extra: str = "") -> str:
    """The first lines of every failure: which property, which backend, which drawn problem
    (its describe() names shape, dtype, routing and seed), then the figures."""
    return f"[{prop}] backend={backend.name} problem: {p.describe()}" + (f"\n{extra}" if extra else "")
