"""Pure decisions, no I/O: canonical form and key, seed and cache policy, the prepared call,
the stored entry format, stream recording, credentials, paths. Tested alone, without a server."""
