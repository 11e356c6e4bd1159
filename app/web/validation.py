"""Request validation against the contract, reporting which field broke which rule.

Connexion's own validators report a flat string; these raise `InvalidParameter` with
`details` a client can act on, turn undecodable bodies into 400s rather than 500s, and
build each JSON Schema validator once instead of once per request. They are given to
Connexion through its `validator_map` and use only its public interface: no private method
is overridden here (tests/test_fence.py).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from connexion.datastructures import MediaTypeDict
from connexion.exceptions import BadRequestProblem
from connexion.json_schema import Draft4RequestValidator
from connexion.validators import VALIDATOR_MAP, ParameterValidator
from jsonschema import Draft4Validator, ValidationError
from jsonschema.exceptions import best_match
from jsonschema.validators import extend
from starlette.datastructures import Headers, QueryParams
from starlette.types import Message, Receive, Scope

from app.domain import keymaterial
from app.domain.errors import InvalidJSON, InvalidParameter
from app.web.credentials import query_may_carry_key
from app.web.state import request_state

LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]", re.ASCII)
_VALIDATORS: dict[int, tuple[dict, Draft4Validator]] = {}
MAX_JSON_DEPTH = 32  # arrays and objects nested in one another
MAX_INTEGER_DIGITS = 100  # far beyond any field's range; Python refuses 4,300 with a ValueError
MAX_PASSED_QUERIES = 64  # query strings remembered as valid, per operation
MAX_REMEMBERED_QUERY = 256  # bytes: a longer query string is validated every time


@functools.lru_cache(maxsize=256)
def ecma_pattern(pattern: str) -> re.Pattern[str]:
    r"""`pattern` read as JSON Schema reads it (ECMA-262): `$` is the end of the text.

    Python's `$` also matches before a final newline, so `^[a-z]+$` would let `"name\n"`
    through. Every `$` outside a character class becomes `\Z`; nothing else differs for the
    contract's patterns (ASCII classes, `[0-9]` rather than `\d`).
    """
    out: list[str] = []
    in_class, i = False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        out.append("\\Z" if c == "$" and not in_class else c)
        i += 1
    return re.compile("".join(out))


def _pattern_within_length(validator: Any, pattern: str, instance: Any, schema: dict) -> Any:
    """jsonschema's `pattern` keyword, with ECMA-262's `$` (`ecma_pattern`), within `maxLength`."""
    if not validator.is_type(instance, "string"):
        return
    # jsonschema checks every keyword, `pattern` even once `maxLength` has failed: a pattern is
    # never run over more text than the schema admits, whatever its cost per character.
    if len(instance) > schema.get("maxLength", len(instance)):
        return
    if not ecma_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


BodyValidator = extend(Draft4RequestValidator, {"pattern": _pattern_within_length})
ParameterSchemaValidator = extend(Draft4Validator, {"pattern": _pattern_within_length})


def _validator_for(schema: dict, cls: Any = BodyValidator) -> Draft4Validator:
    cached = _VALIDATORS.get(id(schema))
    if cached is None or cached[0] is not schema:
        cached = (schema, cls(schema, format_checker=Draft4Validator.FORMAT_CHECKER))
        _VALIDATORS[id(schema)] = cached
    return cached[1]


def describe(error: ValidationError, field: str, location: str) -> InvalidParameter:
    """Turn a JSON Schema error into InvalidParameter naming the field and the broken rule."""
    constraint = str(error.validator)
    details: dict[str, Any] = {"field": field, "in": location, "constraint": constraint}
    if constraint not in ("additionalProperties", "required"):
        details["expected"] = error.validator_value
    if constraint == "required":
        missing = error.message.split("'")[1] if "'" in error.message else field
        details["field"] = f"{field}.{missing}" if field != "body" else missing
        message = f"{details['field']} is required."
    elif constraint == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        details["unexpected"] = extra
        message = f"Unexpected field(s) in {field}: {', '.join(extra)}."
    else:
        # The contract may word a pattern's rule for people (`x-pattern-message`).
        reason = error.schema.get("x-pattern-message") if constraint == "pattern" else None
        value = error.instance
        if reason and _nameable(value):
            reason = f"{value!r}: {reason}"  # short and plain enough to name (an allowlist entry, say)
        message = f"{field} is invalid: {reason or _short(error)}."
    return InvalidParameter(message, details)


def _nameable(value: Any) -> bool:
    """Whether a refused value may be named in the message: short, plain, and holding no key."""
    return (
        isinstance(value, str)
        and len(value) <= 50
        and value.isascii()
        and value.isprintable()
        and keymaterial.redact(value) == value
    )


def _short(error: ValidationError) -> str:
    # jsonschema's messages repeat the offending value, which may be huge: name the rule.
    rule, value = error.validator, error.validator_value
    phrases = {
        "maxLength": f"must be at most {value} characters",
        "minLength": f"must be at least {value} character{'s' if value != 1 else ''}",
        "minimum": f"must be at least {value}",
        "maximum": f"must be at most {value}",
        "type": f"must be of type {value}",
        "pattern": f"must match the pattern {value}",
        "enum": f"must be one of {value}",
        "format": f"must be a valid {value}",
    }
    if rule == "enum" and _nameable(error.instance):
        # Short enough to name: which value was refused (an unknown scope, say) tells the fix.
        return f"{error.instance!r} is not one of {value}"
    return phrases.get(rule, f"breaks the rule {rule}")


class RequestBodyValidator:
    """JSON body validator for Connexion's validator map, with structured errors.

    Written against the interface Connexion's request validation layer uses (connexion 3.3,
    connexion/middleware/request_validation.py): built with the body's schema, whether it is
    required or nullable, and the request's charset; `wrap_receive` reads the body, parses and
    validates it, and hands the next layer a `receive` that replays it. What it does on top of
    Connexion's `JSONRequestBodyValidator`: undecodable bodies and JSON that Python parses but
    JSON forbids are 400s naming the fault (Connexion: 500s, or accepted), errors name the
    field and the rule, the schema's validator is built once, and the parsed body is handed on.
    """

    def __init__(
        self,
        *,
        schema: dict,
        required: bool = False,
        nullable: bool = False,
        encoding: str,
        strict_validation: bool,
        **kwargs: Any,
    ) -> None:
        self.schema = schema
        self.required = required
        self.nullable = nullable
        self.encoding = encoding
        self.validator = _validator_for(schema)

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        """Parse and validate the body; return a `receive` that yields it, and the scope."""
        received = request_state(scope).body
        if received:
            # The body as read, whole, by `app.web.bounds`: not joined again, and `receive` left
            # unread, so the next layer receives it as it was passed on.
            body = self.parse(received, scope)
            if not (body is None and self.nullable):
                self.validate(body)
            return receive, scope
        if not int(Headers(scope=scope).get("content-length", 0)):
            # As Connexion does: no body is the schema's default, if it has one.
            default = self.schema.get("default")
            if default is None and self.required:
                raise BadRequestProblem("RequestBody is required")
            if default is not None:
                raw = json.dumps(default).encode(self.encoding)
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
                scope = {**scope, "headers": [*headers, (b"content-length", str(len(raw)).encode())]}
                receive = _replay([{"type": "http.request", "body": raw, "more_body": False}], receive)
        messages: list[Message] = []
        more = True
        while more:
            message = await receive()
            messages.append(message)
            more = message.get("more_body", False)
        body = self.parse(b"".join(m.get("body", b"") for m in messages), scope)
        if not (body is None and self.nullable):
            self.validate(body)
        return _replay(messages, receive), scope

    def parse(self, raw: bytes, scope: Scope) -> Any:
        """Return the JSON value `raw` holds, None for no body; raise InvalidJSON naming the fault."""
        state = request_state(scope)
        try:
            text = raw.decode(self.encoding)
        except (UnicodeDecodeError, LookupError):
            raise InvalidJSON(f"The request body is not valid {self.encoding} text.") from None
        if not text:
            return None
        try:
            body = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise InvalidJSON(
                f"The request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).",
                {"line": exc.lineno, "column": exc.colno},
            ) from None
        except RecursionError:
            raise _too_deep() from None
        if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(body) > MAX_JSON_DEPTH:
            raise _too_deep()
        if LONE_SURROGATE.search(text) and _has_lone_surrogate(body):
            # `"\ud800"` parses, but is no Unicode text: nothing could store or return it.
            raise InvalidJSON("The request body contains an unpaired UTF-16 surrogate escape.")
        # The handler's `body` argument is this value, validated, instead of a second parse.
        state.json_body = body
        return body

    def validate(self, body: Any) -> None:
        """Raise InvalidParameter naming the field and the rule `body` breaks, if any."""
        if body is None:
            raise InvalidParameter("A JSON object body is required.", {"field": "body", "constraint": "required"})
        error = best_match(self.validator.iter_errors(body))
        if error is not None:
            path = ".".join(str(p) for p in error.absolute_path)
            raise describe(error, path or "body", "body")


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that returns `messages`, then what `receive` does."""
    pending = iter(messages)

    async def replay() -> Message:
        return next(pending, None) or await receive()

    return replay


def _bounded_int(digits: str) -> int:
    # Checked before conversion: Python's own limit raises a ValueError deep in the parser.
    if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise InvalidJSON(
            f"The request body holds a number longer than {MAX_INTEGER_DIGITS} digits.",
            {"limit_digits": MAX_INTEGER_DIGITS},
        )
    return int(digits)


def _no_constant(name: str) -> Any:
    # Python's parser accepts NaN and Infinity; JSON has neither.
    raise InvalidJSON(f"The request body is not valid JSON: {name} is not a JSON value.")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # `{"name": "a", "name": "b"}` means one thing to one parser and another to the next.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise InvalidJSON(f"The request body names the field {duplicate!r} twice.", {"field": duplicate})
    return result


def _depth(value: Any) -> int:
    """Return how deeply arrays and objects nest in `value` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_JSON_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


def _too_deep() -> InvalidJSON:
    return InvalidJSON(
        f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} deep.", {"limit_depth": MAX_JSON_DEPTH}
    )


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


class RequestParameterValidator(ParameterValidator):
    """Parameter validator with structured errors.

    One per operation (app/web/connexion_tuning/stack.py). An operation whose parameters are
    all in the query is judged by its query string alone, so the query strings it has passed
    are remembered (a bounded few, none that carries or could spell `api_key`: no key is kept)
    and not validated again: a proxy asks the gateway check with the same `?refusal=header`
    on every request.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._query_only = set(self.parameters) <= {"query"}
        self._passed: set[bytes] = set()

    def validate(self, scope: Any) -> None:
        if not (self.parameters or self.strict_validation):  # nothing to parse or check
            return
        if not self._query_only:
            super().validate(scope)
            return
        query = scope.get("query_string", b"")
        if query in self._passed:
            return
        super().validate(scope)
        if len(query) <= MAX_REMEMBERED_QUERY and not query_may_carry_key(query):  # no key is kept
            if len(self._passed) >= MAX_PASSED_QUERIES:
                self._passed.clear()  # start again: what is in use now comes back at once
            self._passed.add(query)

    def validate_request(self, request: Any) -> None:
        sources = {
            "query": lambda: request.query_params,
            "path": lambda: request.path_params,
            "header": lambda: request.headers,
            "cookie": lambda: request.cookies,
        }
        for location, source in sources.items():
            params = self.parameters.get(location)
            if not params:
                continue
            values = source()
            # As sent: Connexion's URI parser has already run query values through int().
            raw = QueryParams(request.scope.get("query_string", b"")) if location == "query" else values
            for param in params:
                name = param["name"]
                value = values.get(name.replace("-", "_") if location == "path" else name)
                if value is None:
                    if param.get("required"):
                        raise InvalidParameter(
                            f"{name} is required.", {"field": name, "in": location, "constraint": "required"}
                        )
                    continue
                value = self._coerce(param, value, location, raw.get(name))
                schema = param.get("schema", param)
                error = best_match(_validator_for(schema, ParameterSchemaValidator).iter_errors(value))
                if error is not None:
                    raise describe(error, name, location)

    def _coerce(self, param: dict, value: Any, location: str, sent: Any = None) -> Any:
        # Connexion's URI parser converts query and path values with int(); this checks what was sent.
        schema = param.get("schema", {})
        text = sent if isinstance(sent, str) else value
        if schema.get("type") == "integer" and isinstance(text, str):
            # ASCII digits only: int() also takes '٣', '３', '1_0', '+3' and ' 3'.
            if not re.fullmatch(r"-?[0-9]{1,100}", text):
                raise InvalidParameter(
                    f"{param['name']} must be a whole number.",
                    {"field": param["name"], "in": location, "constraint": "type", "expected": "integer"},
                )
            return int(text)
        return value


def validator_map() -> dict:
    """Return Connexion's validator map with these validators in place."""
    body = MediaTypeDict(dict(VALIDATOR_MAP["body"]))
    body["*/*json"] = RequestBodyValidator
    return {"parameter": RequestParameterValidator, "body": body, "response": VALIDATOR_MAP["response"]}
