"""What of a request's credentials an answer is searched for (proxy/core/echoes.py), and in
which spellings a JSON writer may have put them."""

from __future__ import annotations

import base64
import json

import orjson
import pytest

from proxy.core.credentials import Credentials
from proxy.core.echoes import SHORTEST, echoed, needles, secrets_of

TOKEN = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"


def found(answer: bytes, credentials: Credentials, body: bytes | None = None) -> bool:
    return echoed(answer, needles(secrets_of(credentials, body)))


def test_a_bearer_token_is_looked_for_without_its_scheme() -> None:
    assert secrets_of((("authorization", f"Bearer {TOKEN}"),)) == [TOKEN.encode()]
    assert found(f'{{"you_sent":"{TOKEN}"}}'.encode(), (("authorization", f"Bearer {TOKEN}"),))


@pytest.mark.parametrize("name", ["api-key", "x-api-key", "x-litellm-api-key", "x-custom"])
def test_a_key_header_is_looked_for_as_sent(name: str) -> None:
    assert secrets_of(((name, f" {TOKEN} "),)) == [TOKEN.encode()]


def test_a_basic_credential_is_looked_for_encoded_and_its_password_decoded() -> None:
    encoded = base64.b64encode(b"alice:correct-horse-battery").decode()
    secrets = secrets_of((("authorization", f"Basic {encoded}"),))
    assert secrets == [encoded.encode(), b"correct-horse-battery"]
    assert found(
        b"password correct-horse-battery refused", (("authorization", f"Basic {encoded}"),)
    )


def test_a_query_credential_is_looked_for_as_written_and_decoded() -> None:
    secrets = secrets_of((("?key", "AIza%2Fabc%2Bdef123"),))
    assert secrets == [b"AIza%2Fabc%2Bdef123", b"AIza/abc+def123"]


def test_each_cookie_value_is_looked_for() -> None:
    secrets = secrets_of((("cookie", "session=0123456789abcdef; theme=dark"),))
    assert secrets == [b"0123456789abcdef"]  # `dark` is too short to mean anything


def test_values_too_short_to_mean_anything_are_not_looked_for() -> None:
    short = "x" * (SHORTEST - 1)
    assert secrets_of((("authorization", f"Bearer {short}"), ("api-key", "sk-a"))) == []
    assert not found(b"Your key sk-a is fine", (("api-key", "sk-a"),))


def test_tool_credentials_in_the_body_are_looked_for() -> None:
    body = orjson.dumps(
        {
            "tools": [
                {
                    "type": "mcp",
                    "server_url": "https://bob:url-password-1@mcp.example.com/k/secret-path-key",
                    "headers": {"X-Key": "tool-header-token-1", "X-Short": "no"},
                    "authorization": "Bearer oauth-token-value-1",
                }
            ]
        }
    )
    assert set(secrets_of((), body)) == {
        b"tool-header-token-1",
        b"oauth-token-value-1",
        b"Bearer oauth-token-value-1",
        b"url-password-1",
        b"/k/secret-path-key",
    }
    assert found(b'{"text":"called with oauth-token-value-1"}', (), body)
    assert found(b'{"url":"https:\\/\\/mcp.example.com\\/k\\/secret-path-key"}', (), body)


def test_a_body_that_is_no_object_names_no_tool_credential() -> None:
    assert secrets_of((), b"[1, 2]") == []
    assert secrets_of((), b"not json") == []


SLASHED = "sk-ant-api03/Ab+Cd3fG7hJ9kL2mN4pQ6rS8tU0vW=="


@pytest.mark.parametrize(
    "spelled",
    [
        SLASHED,
        SLASHED.replace("/", "\\/"),  # PHP, org.json
        SLASHED.replace("=", "\\u003d"),  # Gson's HTML-safe default
        SLASHED.replace("+", "\\u002B"),  # any writer escaping all but letters and digits
        json.dumps(SLASHED)[1:-1],
    ],
    ids=["plain", "slash", "gson", "upper-hex", "json"],
)
def test_json_escaped_spellings_are_found(spelled: str) -> None:
    answer = b'{"error":{"message":"Incorrect API key provided: ' + spelled.encode() + b'"}}'
    assert found(answer, (("x-api-key", SLASHED),))


# No run of 8 characters a JSON writer leaves alone: the escaped spellings themselves are
# looked for.
CHOPPED = 'ab/cd+ef=gh"ij\\kl/mn'


@pytest.mark.parametrize(
    "spelled",
    [
        CHOPPED,
        json.dumps(CHOPPED)[1:-1],
        json.dumps(CHOPPED)[1:-1].replace("/", "\\/"),
        "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in CHOPPED),
        "".join(c if c.isalnum() else f"\\u{ord(c):04X}" for c in CHOPPED),
    ],
    ids=["plain", "json", "json-slash", "lower-hex", "upper-hex"],
)
def test_a_secret_of_short_plain_runs_is_found_in_its_escaped_spellings(spelled: str) -> None:
    assert found(b'{"echo":"' + spelled.encode() + b'"}', (("api-key", CHOPPED),))


def test_a_random_tokens_long_run_is_found_however_escapes_are_mixed() -> None:
    mixed = SLASHED.replace("/", "\\/").replace("=", "\\u003d").replace("+", "\\u002B")
    assert found(mixed.encode(), (("x-api-key", SLASHED),))


def test_a_words_run_alone_is_not_looked_for() -> None:
    header = (("x-api-key", "application/json"),)
    assert not found(b'{"content":"a web application"}', header)
    assert found(b'{"content":"sent application\\/json"}', header)


def test_an_answer_without_the_credential_is_not_matched() -> None:
    answer = b'{"choices":[{"message":{"content":"sk-proj-Ab3dEf6 is a prefix only"}}]}'
    assert not found(answer, (("authorization", f"Bearer {TOKEN}"),))
    assert not found(answer, ())


@pytest.mark.parametrize("ensure_ascii", [False, True], ids=["kept", "escaped"])
def test_a_non_ascii_secret_is_found_as_python_and_php_write_it(ensure_ascii: bool) -> None:
    secret = "geheim/Pässwort€2024"
    spelled = json.dumps({"sent": secret}, ensure_ascii=ensure_ascii).encode()
    assert found(spelled, (("x-api-key", secret),))
    assert found(spelled.replace(b"/", b"\\/"), (("x-api-key", secret),))


def test_every_credential_a_tool_carries_is_looked_for_as_sealing_reads_it() -> None:
    """What `sealing.sealed` hides is what an echo is looked for: a container's domain secret
    as well as an MCP tool's token, in the body's tools and an input item's."""
    secret = {"domain": "api.example.com", "name": "API_KEY", "value": "domain-secret-value-1"}
    container = {
        "type": "auto",
        "network_policy": {"type": "allowlist", "domain_secrets": [secret]},
    }
    tool = {"type": "code_interpreter", "container": container}
    added = {
        "type": "additional_tools",
        "tools": [{"type": "mcp", "headers": {"X": "item-token-1"}}],
    }
    body = orjson.dumps({"tools": [tool], "input": [added]})
    assert set(secrets_of((), body)) == {b"domain-secret-value-1", b"item-token-1"}
    assert found(b'{"text":"the key is domain-secret-value-1"}', (), body)
