"""The audit's plan (pure): the two arms and the requests they send, fixed before the first one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.tools.remote import shown_url

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
DEFAULT_PROMPT = "Describe the sea in three sentences."
EMBEDDING_BATCH = 256  # inputs per /embeddings request, well under OpenAI's limit of 2048


@dataclass(frozen=True, slots=True)
class Arm:
    """One side of the experiment: how its N requests are sent."""

    name: str
    seed: int | None
    temperature: float | None


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the audit will send, fixed before the first request so its cost is known."""

    base_url: str
    model: str
    prompt: str
    system: str | None
    seed: int
    n: int
    max_tokens: int
    concurrency: int
    distance: str
    embedding_model: str
    timeout: float = 120.0  # seconds for each request, its whole answer included

    @property
    def shown_url(self) -> str:
        """The base URL as the plan and the reports print it, without what may be a credential:
        a gateway's user and password, or a key in the query. Reports are shared; keys are not."""
        return shown_url(self.base_url)

    @property
    def arms(self) -> tuple[Arm, Arm]:
        return Arm("unseeded", None, None), Arm("seeded", self.seed, 0.0)

    def body(self, arm: Arm) -> dict[str, Any]:
        """The chat request of one arm; the unseeded arm sends the caller's defaults as is."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        messages = [*system, {"role": "user", "content": self.prompt}]
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        body["max_tokens"] = self.max_tokens  # the field every OpenAI-compatible server knows
        if arm.seed is not None:
            body["seed"] = arm.seed
        if arm.temperature is not None:
            body["temperature"] = arm.temperature
        return body

    def embedding_requests(self) -> int:
        return 0 if self.distance == "text" else 2 * -(-self.n // EMBEDDING_BATCH)

    def describe(self) -> str:
        """The cost, printed before anything is sent: the audit spends real tokens."""
        text = (
            f"check: {2 * self.n} chat requests ({self.n} per arm) of {self.model} "
            f"at {self.shown_url}, at most {2 * self.n * self.max_tokens} completion tokens "
            f"({self.max_tokens} per request)"
        )
        if self.distance == "embedding":
            text += f", plus up to {self.embedding_requests()} embeddings requests"
            text += f" of {self.embedding_model}"
        return text
