"""Test sessions: deterministic LLM tests recorded to and replayed from a cassette, by the pytest
plugin or around any command (`repro-proxy run`). The defaults both share are here: the plugin's
module must not import the session's (an idle pytest session pays for the plugin alone), and
`run` must not import pytest's."""

DEFAULT_CASSETTE = "tests/cassettes/llm.jsonl"
DEFAULT_UPSTREAM = "https://api.openai.com/v1"
RECORD_MODES = ("none", "once", "new_episodes", "all")
