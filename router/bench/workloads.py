"""Benchmark workloads: deterministic chat requests built from a word list.

Every word is one token to the sim's tokenizer (`\\w+|[^\\w\\s]`) and about one to a BPE
tokenizer for English, so lengths given in "tokens" are word counts. Text depends only on the
seed and the request's place in the workload, never on whether breakpoints are added, so the
same seed with and without `cache_control` gives the same prompts.

Each request names the prefix it could reuse (`prefix`): the oracle hit rate, the share of
requests whose prefix was already sent earlier in send order, is then known without a server.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

WorkloadKind = Literal["shared-prefix", "multi-turn", "random"]
KINDS: tuple[WorkloadKind, ...] = ("shared-prefix", "multi-turn", "random")
# Where requests carry cache_control: the workload's own places (shared-prefix: the system
# prompt; multi-turn: the last two user turns), the request's top level (Anthropic's automatic
# mode), the newest user message only (Anthropic's recipe for conversations), or nowhere.
Marking = Literal["default", "top-level", "newest", "none"]
MARKINGS: tuple[Marking, ...] = ("default", "top-level", "newest", "none")

WORDS = (
    "able", "acid", "aged", "also", "area", "army", "away", "baby", "back", "ball", "band",
    "bank", "base", "bath", "bear", "beat", "been", "beer", "bell", "belt", "best", "bill",
    "bird", "blow", "blue", "boat", "body", "bomb", "bond", "bone", "book", "boom", "born",
    "boss", "both", "bowl", "bulk", "burn", "bush", "busy", "call", "calm", "came", "camp",
    "card", "care", "case", "cash", "cast", "cell", "chat", "chip", "city", "club", "coal",
    "coat", "code", "cold", "come", "cook", "cool", "cope", "copy", "core", "cost", "crew",
    "crop", "dark", "data", "date", "dawn", "days", "dead", "deal", "dean", "dear", "debt",
    "deep", "deny", "desk", "dial", "diet", "disc", "disk", "does", "done", "door", "dose",
    "down", "draw", "drew", "drop", "drug", "dual", "duke", "dust", "duty", "each", "earn",
    "ease", "east", "easy", "edge", "else", "even", "ever", "evil", "exit", "face", "fact",
)  # fmt: skip

CACHE_CONTROL: dict[str, str] = {"type": "ephemeral"}


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One chat request of a workload, before the model and sampling fields are added."""

    messages: list[dict[str, Any]]
    output_len: int
    prefix: str | None  # the reusable prefix this request shares with others; None: none
    label: str  # where it comes from, e.g. "group 3"
    top_level: bool = False  # carries a top-level cache_control

    def body(self, model: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The streamed Chat Completions body, asking for usage and exactly `output_len`
        tokens (servers that stop early at EOS still end at or before it)."""
        return {
            "model": model,
            "messages": self.messages,
            "max_completion_tokens": self.output_len,
            "stream": True,
            "stream_options": {"include_usage": True},
            **({"cache_control": CACHE_CONTROL} if self.top_level else {}),
            **(extra or {}),
        }


@dataclass(frozen=True, kw_only=True)
class WorkloadSpec:
    """What to generate; the defaults are the compare run's (see benchmarks/RESULTS-ttft.md)."""

    kind: WorkloadKind = "shared-prefix"
    num_groups: int = 8
    prompts_per_group: int = 16
    system_prompt_len: int = 2000
    question_len: int = 128
    output_len: int = 64
    num_conversations: int = 16
    turns: int = 6
    input_len: int = 1024
    num_requests: int | None = None  # cap (shared-prefix, multi-turn) or count (random)
    cache_control: bool = True  # False is marking "none"
    marking: Marking = "default"

    @property
    def style(self) -> Marking:
        return self.marking if self.cache_control else "none"


def build(spec: WorkloadSpec, seed: int | str) -> list[BenchRequest]:
    """The workload's requests, in send order."""
    if spec.kind == "shared-prefix":
        requests = _shared_prefix(spec, seed)
    elif spec.kind == "multi-turn":
        requests = _multi_turn(spec, seed)
    else:
        return _random(spec, seed)
    return requests if spec.num_requests is None else requests[: spec.num_requests]


def oracle_hit_rate(requests: Sequence[BenchRequest]) -> float:
    """The share of requests whose prefix was sent before, in send order: the best hit rate
    any router could reach when every replica starts cold."""
    if not requests:
        return 0.0
    seen: set[str] = set()
    hits = 0
    for request in requests:
        if request.prefix is None:
            continue
        hits += request.prefix in seen
        seen.add(request.prefix)
    return hits / len(requests)


def oracle_cached_share(requests: Sequence[BenchRequest], block_size: int = 16) -> float:
    """The share of prompt tokens a single replica with an unbounded prefix cache would serve
    from cache, in send order (in the simulator's tokens): the most any router could reach."""
    # The simulator's own tokenizer and cache model, so the figure matches what it reports.
    from router.sim.kvcache import PrefixCache
    from router.sim.tokenizer import chat_prompt

    cache = PrefixCache(block_size=block_size, capacity=1 << 62)
    cached = total = 0
    for request in requests:
        tokens = chat_prompt(request.messages, None, image_count=0).tokens
        total += len(tokens)
        cached += cache.admit(tokens)
    return cached / total if total else 0.0


def text(rng: random.Random, tokens: int) -> str:
    """`tokens` words separated by spaces."""
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def _rng(seed: int | str, *parts: object) -> random.Random:
    # A str seed is hashed with SHA-512 by `random`, so streams are stable across processes.
    return random.Random("/".join(map(str, (seed, *parts))))


def _part(content: str, marked: bool) -> list[dict[str, Any]]:
    part: dict[str, Any] = {"type": "text", "text": content}
    if marked:
        part["cache_control"] = CACHE_CONTROL
    return [part]


def _shared_prefix(spec: WorkloadSpec, seed: int | str) -> list[BenchRequest]:
    """Groups of prompts sharing a long system prompt, in the manner of SGLang's
    generated-shared-prefix dataset; the groups are interleaved in a seeded random order,
    as tenants' requests would be."""
    requests = []
    style = spec.style
    for group in range(spec.num_groups):
        system = text(_rng(seed, "system", group), spec.system_prompt_len)
        for number in range(spec.prompts_per_group):
            question = text(_rng(seed, "question", group, number), spec.question_len)
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": _part(system, style == "default")},
                {
                    "role": "user",
                    "content": _part(question, True) if style == "newest" else question,
                },
            ]
            requests.append(
                BenchRequest(
                    messages,
                    spec.output_len,
                    f"group-{group}",
                    f"group {group}",
                    top_level=style == "top-level",
                )
            )
    _rng(seed, "order").shuffle(requests)
    return requests


def _multi_turn(spec: WorkloadSpec, seed: int | str) -> list[BenchRequest]:
    """Conversations that grow by one user turn per request, each with its own system prompt.

    A request marks its last user turn and the one before it: the earlier breakpoint is the
    key the previous turn's request recorded, which is how a router that only indexes marked
    positions finds the conversation again. Turn k of every conversation is sent before turn
    k + 1 of any, the conversations in a seeded random order within each turn.
    """
    turns: list[list[BenchRequest]] = [[] for _ in range(spec.turns)]
    style = spec.style
    for number in range(spec.num_conversations):
        history: list[dict[str, Any]] = []
        if spec.system_prompt_len:
            system = text(_rng(seed, "system", number), spec.system_prompt_len)
            history.append({"role": "system", "content": _part(system, False)})
        questions: list[str] = []
        for turn in range(spec.turns):
            questions.append(text(_rng(seed, "user", number, turn), spec.question_len))
            messages: list[dict[str, Any]] = [*history]
            for asked, question in enumerate(questions):
                marked = (style == "default" and asked >= turn - 1) or (
                    style == "newest" and asked == turn
                )
                messages.append({"role": "user", "content": _part(question, marked)})
                if asked < turn:
                    answer = text(_rng(seed, "assistant", number, asked), spec.output_len)
                    messages.append({"role": "assistant", "content": answer})
            label = f"conversation {number} turn {turn}"
            turns[turn].append(
                BenchRequest(
                    messages,
                    spec.output_len,
                    f"conversation-{number}",
                    label,
                    top_level=style == "top-level",
                )
            )
    order = _rng(seed, "order")
    requests: list[BenchRequest] = []
    for batch in turns:
        order.shuffle(batch)
        requests += batch
    return requests


def _random(spec: WorkloadSpec, seed: int | str) -> list[BenchRequest]:
    """Unrelated prompts of `input_len` tokens: no shared prefix, no breakpoints."""
    count = 128 if spec.num_requests is None else spec.num_requests
    return [
        BenchRequest(
            [{"role": "user", "content": text(_rng(seed, "random", number), spec.input_len)}],
            spec.output_len,
            None,
            f"random {number}",
        )
        for number in range(count)
    ]
