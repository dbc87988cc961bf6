"""The one boundary to the upstream: the HTTP client, which headers cross, how it is reached."""
