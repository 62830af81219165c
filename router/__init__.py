"""tensorgate's router: the server, its configuration, registry, dataplane and fronts."""

__version__ = "0.1.0"
