"""The pytest plugin: deterministic LLM tests recorded to and replayed from a cassette."""
