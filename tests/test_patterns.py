"""Every regular expression the service runs on client input is linear-time.

A pattern with an ambiguous alternation or nested quantifiers can take seconds on a few
kilobytes of crafted text (a 65 KB name once took 14 s to refuse), so each is run here on
adversarial input of the largest size a request can carry and must answer in milliseconds.
This is a bound on complexity, not a benchmark: a quadratic pattern takes seconds here.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import time
from collections.abc import Callable, Iterator

import pytest

import app
from app.logs import scrub
from app.web.validation import MAX_INTEGER_DIGITS
from tests.test_contract import spec

SIZE = 64 * 1024  # the largest request body; request lines and headers are bounded lower
BUDGET_S = 0.05
ALPHABET = ["a", "0", " ", "-", "_", ".", "=", "/", "\u0000", "\u200b", "\u00e9", "\u3164", "{", "["]
TAILS = ["", "\u0000", "!", " ", "\u200b", "\n"]


def contract_patterns() -> Iterator[tuple[str, re.Pattern[str]]]:
    def walk(node: object, path: str) -> Iterator[tuple[str, re.Pattern[str]]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "pattern" and isinstance(value, str):
                    yield f"openapi.json{path}", re.compile(value)
                else:
                    yield from walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from walk(value, f"{path}/{index}")

    yield from walk(spec(), "")


def code_patterns() -> Iterator[tuple[str, re.Pattern[str]]]:
    for module_info in pkgutil.walk_packages(app.__path__, "app."):
        if module_info.name in ("app.__main__", "app.asgi"):
            continue  # entry points; they define no patterns
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if isinstance(value, re.Pattern) and value.pattern and not name.startswith("__"):
                yield f"{module_info.name}.{name}", value


PATTERNS = dict([*contract_patterns(), *code_patterns()])


def adversarial(pattern: str) -> Iterator[str]:
    """Inputs of SIZE characters that make a backtracking pattern work hardest."""
    words = sorted(set(re.findall(r"[A-Za-z0-9_]{2,}", pattern)))
    seeds = ALPHABET + words + [a + b for a in ALPHABET[:8] for b in ALPHABET[:8] if a != b]
    for seed in seeds:
        body = seed * (SIZE // len(seed))
        for tail in TAILS:
            yield body[: SIZE - len(tail)] + tail


def slowest(run: Callable[[str], object], inputs: Iterator[str]) -> tuple[float, str]:
    worst, worst_input = 0.0, ""
    for text in inputs:
        started = time.perf_counter()
        run(text)
        elapsed = time.perf_counter() - started
        if elapsed > worst:
            # Timed again before it counts: one slow run on a busy machine proves nothing.
            again = time.perf_counter()
            run(text)
            elapsed = min(elapsed, time.perf_counter() - again)
            if elapsed > worst:
                worst, worst_input = elapsed, text
    return worst, worst_input


def test_the_contract_and_the_code_have_patterns_to_check():
    assert any(name.startswith("openapi.json") and "name" in name for name in PATTERNS)
    assert "app.logs.API_KEY" in PATTERNS and "app.logs.TOKEN_RUN" in PATTERNS


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_is_linear_time_on_adversarial_input(name):
    pattern = PATTERNS[name]
    if isinstance(pattern.pattern, bytes):  # run on raw request bytes
        source = pattern.pattern.decode("latin-1")
        worst, text = slowest(lambda t: pattern.search(t.encode("utf-8")), adversarial(source))
    else:
        worst, text = slowest(pattern.search, adversarial(pattern.pattern))
    assert worst < BUDGET_S, f"{name} took {worst * 1000:.0f} ms on {text[:30]!r}…"


def test_log_redaction_is_linear_time_on_adversarial_request_lines():
    lines = [f"GET /healthz?x={seed * (SIZE // len(seed))}" for seed in ("eyJ", "eyJ.", ".eyJ", "sk_live_", "eyJa.b", "a.")]
    worst, text = slowest(scrub, iter(lines))
    assert worst < BUDGET_S, f"scrub took {worst * 1000:.0f} ms on {text[:40]!r}…"


def test_a_huge_integer_is_refused_before_python_converts_it():
    digits = "9" * (MAX_INTEGER_DIGITS + 1)
    with pytest.raises(Exception) as refusal:
        json.loads(digits, parse_int=importlib.import_module("app.web.validation")._bounded_int)
    assert refusal.type.__name__ == "InvalidJSON"
