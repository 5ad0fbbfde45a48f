"""Grammars of the strings a deploy spec names: image tags and registries, git refs, paths, hosts, pip
requirements. Each checker returns the value or raises ``ValueError`` saying what is wrong, so pydantic
names the field. Validation is the first line of defence against a spec that becomes code; the templates
still quote every value for the file they write (see :mod:`haloserve.deploy.quoting`).
"""

from __future__ import annotations

import ipaddress
import re

# The OCI / Docker reference grammar (distribution/reference): a tag, domain and path components.
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]{{1,5}})?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REGISTRY = re.compile(rf"(?:{_DOMAIN}/)(?:{_PATH}/)*")
# One path component of the files we mount or name: no spaces, quotes, $, : or , (volume syntax).
_PART = re.compile(r"[A-Za-z0-9_+@][A-Za-z0-9._+@-]*|\.[A-Za-z0-9._+@-]+")
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
QUANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
# A pip requirement or URL (PEP 508 names, specifiers, extras, VCS URLs): no whitespace, quotes or shell
# operators, which no requirement needs.
REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-\[\],<>=!~:/@#%?]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# Container paths a volume must never be mounted over (the gateway's keys volume)
SYSTEM_DIRS = frozenset(
    {
        *("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/opt", "/opt/venv", "/proc", "/root"),
        *("/run", "/sbin", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/var"),
    }
)


def image_tag(value: str) -> str:
    """An image tag: ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`` (the Docker reference grammar)."""
    if not TAG.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an image tag: letters, digits, _ . - (up to 128, not starting with . or -)"
        )
    return value


def registry(value: str) -> str:
    """An image name prefix ending in ``/``: a registry host[:port] and lowercase path components."""
    if not value:
        return value
    value = value if value.endswith("/") else value + "/"
    if not REGISTRY.fullmatch(value) or len(value) > 200:
        raise ValueError(
            f"{value!r} is not a registry prefix such as registry.lan:5000/ or ghcr.io/team/ "
            "(host[:port] then lowercase path components)"
        )
    return value


def git_ref(value: str) -> str:
    """A branch or tag name by ``git check-ref-format`` rules, and not an option (no leading ``-``)."""
    why = None
    if not value or len(value) > 255:
        why = "is empty or longer than 255 characters"
    elif value.startswith("-"):
        why = "starts with -"
    elif re.search(r"[\x00-\x20\x7f~^:?*\[\\]", value):
        why = "contains a space, a control character or one of ~ ^ : ? * [ \\"
    elif ".." in value or "@{" in value or value == "@":
        why = "contains .. or @{ (or is @)"
    elif value.startswith("/") or value.endswith(("/", ".")) or "//" in value:
        why = "starts or ends with /, ends with . or contains //"
    elif any(p.startswith(".") or p.endswith(".lock") for p in value.split("/")):
        why = "has a component starting with . or ending with .lock"
    if why:
        raise ValueError(f"{value!r} is not a git branch or tag name: it {why} (see git check-ref-format)")
    return value


def _parts(value: str, what: str) -> list[str]:
    parts = value.strip("/").split("/") if value.strip("/") else []
    for part in parts:
        if part in (".", "..") or not _PART.fullmatch(part):
            raise ValueError(
                f"{value!r} is not a plain {what}: each component uses letters, digits and . _ + @ - only "
                "(no spaces, quotes, $, :, ., ..)"
            )
    return parts


def abs_path(value: str) -> str:
    """An absolute path of plain components (no spaces, quotes, ``$``, ``:``, ``..``); no ``//``."""
    if not value.startswith("/") or "//" in value:
        raise ValueError(f"{value!r} is not an absolute path such as /srv/models")
    _parts(value, "absolute path")
    return value


def keys_file(value: str) -> str:
    """An absolute file path whose directory can hold a volume (not ``/`` nor a system directory)."""
    abs_path(value)
    if value.endswith("/"):
        raise ValueError(f"{value!r} names a directory: give the SQLite file, e.g. /var/lib/halo/keys.db")
    folder = value.rsplit("/", 1)[0] or "/"
    if folder in SYSTEM_DIRS:
        raise ValueError(
            f"{value!r}: the keys volume would hide {folder}; use a directory of its own, e.g. "
            "/var/lib/halo/keys.db"
        )
    return value


def gguf_file(value: str) -> str:
    """A relative ``.gguf`` path inside a models directory."""
    if value.startswith("/") or not value.endswith(".gguf") or "//" in value:
        raise ValueError(f"{value!r} is not a relative path to a .gguf file inside models_dir")
    _parts(value, "relative path")
    return value


def host(value: str) -> str:
    """An IPv4/IPv6 address (no zone) or a DNS hostname."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        if len(value) <= 253 and HOSTNAME.fullmatch(value) and not value.replace(".", "").isdigit():
            return value
        raise ValueError(f"{value!r} is neither an IP address nor a hostname") from None
    if "%" in value:
        raise ValueError(f"{value!r}: give the address without a zone (%...)")
    return str(ip)


def interface_address(value: str) -> str:
    """An address with its prefix length, e.g. ``10.0.1.1/24`` (no IPv6 zone)."""
    if "/" not in value:
        raise ValueError("give the address with its prefix length, e.g. 10.0.1.1/24")
    if "%" in value:
        raise ValueError(f"{value!r}: give the address without a zone (%...)")
    try:
        ipaddress.ip_interface(value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return value


def hf_id(value: str) -> str:
    """A Hugging Face repository id ``owner/name``."""
    if not HF_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a Hugging Face id such as Qwen/Qwen3-8B")
    return value


def quant(value: str) -> str:
    """A quantisation name such as ``Q4_K_M``, ``BF16`` or ``UD-Q4_K_XL``."""
    if not QUANT.fullmatch(value):
        raise ValueError(f"{value!r} is not a quantisation name such as Q4_K_M or BF16")
    return value


def requirement(value: str) -> str:
    """A pip requirement or URL without whitespace, quotes or shell operators."""
    if not REQUIREMENT.fullmatch(value) or len(value) > 500:
        raise ValueError(
            f"{value!r} is not a pip requirement or URL (no spaces, quotes, $, `, ;, | or newlines)"
        )
    return value


def printable(value: str) -> str:
    """Any text on one line: no control characters or line breaks."""
    if _CONTROL.search(value):
        raise ValueError(f"{value!r} contains a control character, a line break or a lone surrogate")
    return value
