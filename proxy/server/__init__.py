"""The aiohttp application: routes, the life of a cacheable request (lookup, coalescing, forward,
record, streams), key checks, fingerprint tracking, probes, drift sampling, and the serving loop."""
