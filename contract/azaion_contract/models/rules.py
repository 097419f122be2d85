"""Validation rules written once and enforced twice.

Every :class:`Rule` becomes a CEL rule in the generated CRD, so the API server
refuses a bad object at apply time with the rule's message, and the same check
in Python, so pydantic (the operator, the workloads, the tests) refuses exactly
the same objects. Regular expressions are written in the common subset of RE2
(CEL's ``matches``) and Python's ``re``; CEL's ``matches`` searches, so every
pattern is anchored, and Python uses ``fullmatch`` (``$`` alone would let a
trailing newline through).

The messages say what is allowed; the API server prefixes the field's path
(``spec.resources.cpu: Invalid value: ...: <message>``), pydantic its location.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema


@dataclass(frozen=True)
class Rule:
    """One check: ``cel`` for the API server, ``check`` for pydantic, one ``message`` for both.

    On a field, ``Annotated[str, Rule(...)]``: ``self`` (CEL) and the argument
    of ``check`` are the field's value. On a model, in its ``cel_rules``:
    they are the object, and ``field`` (a wire name) is the member the message
    is about, which the API server then reports as the path.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field: str | None = None

    def crd_entry(self) -> dict[str, str]:
        entry = {"rule": self.cel, "message": self.message}
        if self.field:
            entry["fieldPath"] = f".{self.field}"
        return entry

    def python_message(self) -> str:
        # pydantic reports the object's location for a model rule: name the member too.
        return f"{self.field}: {self.message}" if self.field else self.message

    def validate(self, value: Any) -> Any:
        if not self.check(value):
            raise ValueError(self.python_message())
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("x-kubernetes-validations", []).append(self.crd_entry())
        return json_schema


def _full(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern)
    return lambda value: compiled.fullmatch(value) is not None


def matching(pattern: str, message: str) -> Rule:
    """The value matches the anchored ``pattern``."""
    return Rule(f"self.matches('{cel_string(pattern)}')", message, _full(pattern))


def cel_string(pattern: str) -> str:
    """``pattern`` inside a single-quoted CEL string literal."""
    return pattern.replace("\\", "\\\\").replace("'", "\\'")


# --- Kubernetes names and labels ---------------------------------------------

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A label key (also an annotation key, a nodeSelector key, a taint key): an
# optional DNS-subdomain prefix and "/", then a name of at most 63 characters.
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"  # prefix/
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"  # name
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
# A key of a Secret's data.
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"  # noqa: S105 - a pattern, not a secret

_SUBDOMAIN_WORDS = "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"

DNS_SUBDOMAIN = matching(DNS_SUBDOMAIN_PATTERN, f"must be a DNS-1123 subdomain: {_SUBDOMAIN_WORDS}")
DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253), DNS_SUBDOMAIN]
"""The name of a namespaced or cluster object (Secret, claim, StorageClass...)."""

_qualified = _full(QUALIFIED_NAME_PATTERN)


def is_qualified_name(key: str) -> bool:
    """Kubernetes' IsQualifiedName: the regex, and a prefix of at most 253 characters."""
    return _qualified(key) and ("/" not in key or key.index("/") <= 253)


def _qualified_cel(var: str) -> str:
    """CEL: ``var`` is a qualified name (the mirror of :func:`is_qualified_name`)."""
    pattern = cel_string(QUALIFIED_NAME_PATTERN)
    return f"{var}.matches('{pattern}') && ({var}.indexOf('/') < 0 || {var}.indexOf('/') <= 253)"


_QUALIFIED_WORDS = (
    "a name of at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit, "
    "optionally after a DNS subdomain prefix and '/' (example.com/name)"
)
_LABEL_VALUE_WORDS = (
    "at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit (or empty)"
)
_label_value = _full(LABEL_VALUE_PATTERN)

# A toleration's key: empty (with operator Exists: every taint) or a label key.
TAINT_KEY = Rule(
    f"self == '' || ({_qualified_cel('self')})",
    f"must be empty or a taint key: {_QUALIFIED_WORDS}",
    lambda key: key == "" or is_qualified_name(key),
)
LABEL_VALUE = matching(LABEL_VALUE_PATTERN, f"must be a label value: {_LABEL_VALUE_WORDS}")

LABEL_KEYS = Rule(
    f"self.all(k, {_qualified_cel('k')})",
    f"every key must be a label key: {_QUALIFIED_WORDS}",
    lambda labels: all(is_qualified_name(k) for k in labels),
)
LABEL_VALUES = Rule(
    f"self.all(k, self[k].matches('{cel_string(LABEL_VALUE_PATTERN)}'))",
    f"every value must be a label value: {_LABEL_VALUE_WORDS}",
    lambda labels: all(_label_value(v) for v in labels.values()),
)

# Bounds keep the API server's CEL cost estimate of the map rules finite.
MAX_LABELS = 64
Labels = Annotated[
    dict[str, Annotated[str, Field(max_length=63)]],
    Field(max_length=MAX_LABELS),
    LABEL_KEYS,
    LABEL_VALUES,
]
"""Labels, or a nodeSelector: the keys and values a pod's labels may have."""

# The API server's limit on all annotations of an object together.
MAX_ANNOTATIONS_BYTES = 256 * 1024
Annotations = Annotated[
    dict[str, Annotated[str, Field(max_length=MAX_ANNOTATIONS_BYTES)]],
    # 64 keeps the byte count below the API server's CEL cost budget.
    Field(max_length=MAX_LABELS),
    Rule(
        # Kubernetes checks annotation keys in lowercase (ValidateAnnotations).
        f"self.all(k, {_qualified_cel('k.lowerAscii()')})",
        f"every key must be an annotation key: {_QUALIFIED_WORDS}",
        lambda annotations: all(is_qualified_name(k.lower()) for k in annotations),
    ),
    Rule(
        f"self.map(k, size(bytes(k)) + size(bytes(self[k]))).sum() <= {MAX_ANNOTATIONS_BYTES}",
        f"keys and values together may have at most {MAX_ANNOTATIONS_BYTES} bytes",
        lambda annotations: (
            sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items()) <= MAX_ANNOTATIONS_BYTES
        ),
    ),
]
"""Annotations a pod may carry."""


def is_secret_key(key: str) -> bool:
    """Kubernetes' IsConfigMapKey: what a Secret's data may be keyed by."""
    return _full(SECRET_KEY_PATTERN)(key) and key != "." and not key.startswith("..")


SecretKey = Annotated[
    str,
    Field(min_length=1, max_length=253),
    Rule(
        f"self.matches('{SECRET_KEY_PATTERN}') && self != '.' && !self.startsWith('..')",
        "must be a Secret key: letters, digits, '-', '_' and '.', not '.' and not starting with '..'",
        is_secret_key,
    ),
]
"""A key in a Secret's data."""


# --- Quantities ----------------------------------------------------------------

# Kubernetes' quantity grammar (resource.ParseQuantity; CEL's isQuantity).
QUANTITY_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"


def is_positive_quantity(value: str) -> bool:
    if re.fullmatch(QUANTITY_PATTERN, value) is None:
        return False
    number = re.match(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)", value)
    try:
        return number is not None and Decimal(number.group()) > 0
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        return False


POSITIVE_QUANTITY = Rule(
    "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
    "must be a positive Kubernetes quantity, e.g. 500m, 2, 8Gi or 1.5G",
    is_positive_quantity,
)
Quantity = Annotated[str, Field(max_length=64), POSITIVE_QUANTITY]
"""A positive resource quantity ("500m", "8Gi", "1.5")."""


# --- Paths, hosts, URLs, times ------------------------------------------------


def is_data_root_path(path: str) -> bool:
    """A relative path that stays under the data root: not absolute, no '..' component."""
    return not path.startswith("/") and ".." not in path.split("/")


DATA_ROOT_PATH = Rule(
    "!self.startsWith('/') && !self.split('/').exists(p, p == '..')",
    "must be a path relative to the data root: not starting with '/' and without '..'",
    is_data_root_path,
)

# A DNS name as resolvers take it: labels of letters, digits and '-', up to 63 characters each.
HOSTNAME_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"


def is_ip(value: str) -> bool:
    """CEL's isIP: an IPv4 or IPv6 address, without a zone."""
    if "%" in value:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


HOST = Rule(
    f"self.matches('{cel_string(HOSTNAME_PATTERN)}') || isIP(self)",
    "must be a host name or an IP address only (no scheme, port, path or credentials)",
    lambda value: _full(HOSTNAME_PATTERN)(value) or is_ip(value),
)


def is_http_url(value: str) -> bool:
    """An absolute http(s) URL with a host and no credentials (CEL's url() and getHostname())."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc and " " not in value


HTTP_URL = Rule(
    "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''"
    " && !self.matches('^[a-z]+://[^/]*@') && !self.contains(' ')",
    "must be an http:// or https:// URL with a host, and without credentials",
    is_http_url,
)

# RFC 3339 as the API server's timestamp() reads it: date, time, and Z or an offset.
RFC3339_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"


def is_rfc3339(value: str) -> bool:
    """A real RFC 3339 time: the format, and a date and offset that exist."""
    if re.fullmatch(RFC3339_PATTERN, value) is None:
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


# --- Images -------------------------------------------------------------------

# The image reference grammar of the container runtimes (distribution/reference):
# [registry[:port]/]path[:tag][@digest], path components in lowercase.
_DOMAIN_COMPONENT = r"([a-zA-Z0-9]|[a-zA-Z0-9][-a-zA-Z0-9]*[a-zA-Z0-9])"
_PATH_COMPONENT = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
IMAGE_PATTERN = (
    rf"^(({_DOMAIN_COMPONENT}(\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(:[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(/{_PATH_COMPONENT})*"
    r"(:[A-Za-z0-9_][-A-Za-z0-9_.]{0,127})?"
    r"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
Image = Annotated[
    str,
    Field(min_length=1, max_length=1024),
    matching(
        IMAGE_PATTERN,
        "must be an image reference: [registry[:port]/]repository[:tag][@digest], "
        "the repository in lowercase, without spaces",
    ),
]
"""A container image reference."""
