"""Commands beside `serve`: the simulated upstream, the determinism audit, and the admin and
cassette clients. They never import the server's internals."""
