"""HTTP handlers, bound to the contract's operationIds (`createAPIKey` -> `create_api_key`)."""

from handlers.events import list_key_events
from handlers.gateway import check_request
from handlers.health import get_health, get_metrics, get_readiness, head_health, head_readiness
from handlers.keys import create_api_key, get_api_key, list_api_keys, revoke_api_key, roll_api_key, update_api_key
from handlers.leaks import report_leaked_keys
from handlers.whoami import get_current_key

__all__ = [
    "check_request",
    "create_api_key",
    "get_api_key",
    "get_current_key",
    "get_health",
    "get_metrics",
    "get_readiness",
    "head_health",
    "head_readiness",
    "list_api_keys",
    "list_key_events",
    "report_leaked_keys",
    "revoke_api_key",
    "roll_api_key",
    "update_api_key",
]
