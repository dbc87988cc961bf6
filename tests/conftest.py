"""Fixtures live in small plugin modules so each concern can be read alone."""

pytest_plugins = ["tests.fixtures_redis", "tests.fixtures_procs", "tests.fixtures_tls"]
