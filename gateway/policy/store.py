"""Load a policy directory (validate each file, merge, hash) and serve it with atomic hot reload.

Every *.yaml file directly in the directory is read in file-name order; dotfiles are skipped (editor
lock files) and ``*.yml`` files are refused rather than silently ignored. Errors name the file, the
line, the field and what was expected, e.g. ``team.yaml line 12: roles.engineer.max_tokens: Input
should be a valid integer``; all errors of all files are reported at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.policy.schema import (
    FORMAT_VERSION,
    PATTERN_HELP,
    WHEN_TAGS,
    Binding,
    PolicyDocument,
    PolicyFile,
    Role,
)

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 20
Fingerprint = tuple[tuple[str, int, int], ...]
Loc = tuple[int | str, ...]


class PolicyError(Exception):
    """The policy cannot be used; ``errors`` holds one line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    document: PolicyDocument
    version: str  # first 16 hex digits of SHA-256 over the sorted (file name, content) pairs
    files: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _File:
    name: str
    policy: PolicyFile
    root: yaml.Node

    def place(self, loc: Loc) -> str:
        return f"{self.name} line {_locate(self.root, loc)[0]}"

    def at(self, loc: Loc) -> str:
        line, path = _locate(self.root, loc)
        return f"{self.name} line {line}: {path}"


def load_policy_dir(directory: Path) -> LoadedPolicy:
    paths = _policy_paths(directory)
    errors: list[str] = []
    files: list[_File] = []
    digest = hashlib.sha256()
    for path in paths:
        raw = _read(path, errors)
        if raw is None:
            continue
        name = path.name.encode()
        digest.update(len(name).to_bytes(4, "big") + name + len(raw).to_bytes(8, "big") + raw)
        parsed = _parse(path.name, raw, errors)
        if parsed is not None:
            files.append(parsed)
    if errors:
        raise PolicyError(errors)
    document = _merge(files, errors)
    if errors:
        raise PolicyError(errors)
    return LoadedPolicy(document, digest.hexdigest()[:16], tuple(path.name for path in paths))


def fingerprint(directory: Path) -> Fingerprint:
    """What the watcher compares: file names, modification times and sizes."""
    try:
        return tuple((p.name, (st := p.stat()).st_mtime_ns, st.st_size) for p in _candidates(directory))
    except OSError as exc:
        return (("<unreadable>", exc.errno or 0, 0),)


def _candidates(directory: Path) -> list[Path]:
    names = (p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))
    return sorted((p for p in names if p.is_file()), key=lambda p: p.name)


def _policy_paths(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise PolicyError([f"{directory}: not a directory"])
    try:
        candidates = _candidates(directory)
    except OSError as exc:
        raise PolicyError([f"{directory}: cannot list ({exc.strerror})"]) from None
    wrong = [f"{p.name}: policy files end in .yaml; rename it" for p in candidates if p.suffix == ".yml"]
    if wrong:
        raise PolicyError(wrong)
    if not candidates:
        raise PolicyError([f"{directory}: no *.yaml policy files; with no policy nothing would be allowed"])
    return candidates


def _read(path: Path, errors: list[str]) -> bytes | None:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        errors.append(f"{path.name}: cannot read ({exc.strerror})")
        return None
    if len(raw) > MAX_FILE_BYTES:
        errors.append(f"{path.name}: larger than {MAX_FILE_BYTES} bytes")
        return None
    return raw


def _parse(name: str, raw: bytes, errors: list[str]) -> _File | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        errors.append(f"{name}: not UTF-8 text (byte {exc.start})")
        return None
    found: list[tuple[int, str]] = []
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            # Before constructing: construction folds `<<` merge keys into the mapping in place.
            _duplicate_keys(root, (), found, set())
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        errors.append(f"{name}{where}: invalid YAML: {exc.problem or exc.context}")
        return None
    except yaml.YAMLError:
        errors.append(f"{name}: invalid YAML")
        return None
    finally:
        loader.dispose()
    if root is None:
        errors.append(f"{name}: the file is empty; a policy file starts with 'version: {FORMAT_VERSION}'")
        return None
    if not isinstance(data, dict):
        errors.append(f"{name} line {root.start_mark.line + 1}: expected a mapping with 'version: 1' first")
        return None
    policy: PolicyFile | None = None
    version = data.get("version")
    if "version" not in data:
        found.append((1, f"version: missing; add 'version: {FORMAT_VERSION}' at the top"))
    elif type(version) is not int or version != FORMAT_VERSION:
        line, path = _locate(root, ("version",))
        found.append((line, f"{path}: unsupported format version; this gateway reads {FORMAT_VERSION}"))
    else:
        try:
            policy = PolicyFile.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                line, path = _locate(root, tuple(error["loc"]))
                found.append((line, f"{path}: {_message(error)}"))
    errors.extend(f"{name} line {line}: {text}" for line, text in sorted(found, key=lambda item: item[0]))
    return _File(name, policy, root) if policy is not None and not found else None


def _message(error: ErrorDetails) -> str:
    if error["type"] == "string_pattern_mismatch":
        return PATTERN_HELP.get(str(error.get("ctx", {}).get("pattern")), error["msg"])
    return error["msg"].removeprefix("Value error, ")


def _duplicate_keys(node: yaml.Node, path: Loc, found: list[tuple[int, str]], seen: set[int]) -> None:
    # YAML keeps the last of two equal keys without a word; in a policy that silently changes access.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            label = key.value if isinstance(key, yaml.ScalarNode) else "?"
            line = key.start_mark.line + 1
            if label in first and key.tag != "tag:yaml.org,2002:merge":
                where = _path((*path, label))
                found.append((line, f"{where}: duplicate key (first at line {first[label]})"))
            first.setdefault(label, line)
            _duplicate_keys(value, (*path, label), found, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _duplicate_keys(item, (*path, index), found, seen)


def _locate(root: yaml.Node, loc: Loc) -> tuple[int, str]:
    """The line where ``loc`` is written (its nearest existing ancestor if absent) and its dotted path."""
    node: yaml.Node | None = root
    line = root.start_mark.line + 1
    parts: list[int | str] = []
    for part in loc:
        if part == "[key]" or (part in WHEN_TAGS and parts and parts[-1] == "when"):
            continue
        parts.append(part)
        if isinstance(node, yaml.MappingNode):
            pair = next((kv for kv in node.value if kv[0].value == str(part)), None)
            node = pair[1] if pair else None
            line = pair[0].start_mark.line + 1 if pair else line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            node = None
    return line, _path(parts)


def _path(parts: Sequence[int | str]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part}"
    return text or "<top level>"


def _merge(files: list[_File], errors: list[str]) -> PolicyDocument:
    tenant_at: str | None = None
    tenant = None
    roles: dict[str, Role] = {}
    role_at: dict[str, str] = {}
    binding_at: dict[str, str] = {}
    bindings: list[tuple[_File, int, Binding]] = []
    for file in files:
        if file.policy.tenant is not None:
            if tenant_at is None:
                tenant, tenant_at = file.policy.tenant, file.place(("tenant",))
            else:
                where = file.at(("tenant",))
                errors.append(f"{where}: already defined in {tenant_at}; define the tenant in one file only")
        for name, role in file.policy.roles.items():
            if name in role_at:
                errors.append(f"{file.at(('roles', name))}: role '{name}' is also defined in {role_at[name]}")
            else:
                roles[name], role_at[name] = role, file.place(("roles", name))
        for index, binding in enumerate(file.policy.bindings):
            loc = ("bindings", index, "name")
            if binding.name in binding_at:
                first = binding_at[binding.name]
                errors.append(f"{file.at(loc)}: binding '{binding.name}' is also defined in {first}")
            else:
                binding_at[binding.name] = file.place(loc)
            bindings.append((file, index, binding))
    for file, index, binding in bindings:
        for position, role_name in enumerate(binding.roles):
            if role_name not in roles:
                where = file.at(("bindings", index, "roles", position))
                errors.append(f"{where}: role '{role_name}' is not defined in any policy file")
    return PolicyDocument(tenant, tuple(b for _, _, b in bindings), MappingProxyType(roles))


class PolicyStore:
    """The current policy, replaced as a whole on a good reload and kept on a bad one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fingerprint = fingerprint(directory)
        self._current = load_policy_dir(directory)
        self._last_error: str | None = None
        self._reload_lock = threading.Lock()  # serializes reloads; readers never wait
        self.reloads_ok = 0
        self.reloads_failed = 0

    @property
    def current(self) -> LoadedPolicy:
        return self._current

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def reload(self) -> bool:
        """Load the directory again; True if a new version replaced the current one."""
        with self._reload_lock:
            # Taken before reading: a change during the load shows up as a new fingerprint next poll.
            self._fingerprint = fingerprint(self.directory)
            try:
                loaded = load_policy_dir(self.directory)
            except PolicyError as exc:
                self._last_error = str(exc)
                self.reloads_failed += 1
                logger.warning(
                    "policy reload failed; keeping version %s: %s",
                    self._current.version,
                    "; ".join(exc.errors),
                )
                return False
            self._last_error = None
            self.reloads_ok += 1
            if loaded.version == self._current.version:
                return False
            previous = self._current.version
            self._current = loaded  # one assignment: readers see the old policy or the new, never a mix
            logger.info("policy version %s replaces %s", loaded.version, previous)
            return True

    def changed(self) -> bool:
        return fingerprint(self.directory) != self._fingerprint

    async def watch(self, interval_s: float) -> None:
        """Poll the directory every ``interval_s`` seconds and reload when a file appears, goes or changes."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await asyncio.to_thread(self.changed):
                    await asyncio.to_thread(self.reload)
            except Exception:  # a watcher that dies would freeze the policy without a word
                logger.warning("policy watch step failed", exc_info=True)
