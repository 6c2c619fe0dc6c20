"""Loading policy directories (errors with file, line and field) and hot reload that keeps the last good."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from gateway.policy.store import PolicyError, PolicyStore, fingerprint, load_policy_dir

GOOD = """\
version: 1
bindings:
  - name: eng
    when: {claim: groups, contains: eng}
    roles: [engineer]
roles:
  engineer:
    models: ["llama-*"]
    max_tokens: 4096
"""


def write(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return directory


def load_errors(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy_dir(directory)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return list(caught.value.errors)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"team.yaml": GOOD.replace("max_tokens: 4096", "max_tokens: many")},
            ["team.yaml line 9: roles.engineer.max_tokens: Input should be a valid integer"],
        ),
        (
            {"team.yaml": GOOD.replace("max_tokens: 4096", "max_tokens: 0")},
            ["team.yaml line 9: roles.engineer.max_tokens: Input should be greater than 0"],
        ),
        (
            {"team.yaml": GOOD.replace("    max_tokens: 4096\n", "")},
            ["team.yaml line 7: roles.engineer.max_tokens: Field required"],
        ),
        (
            {"team.yaml": GOOD + "    modles: [x]\n"},
            ["team.yaml line 10: roles.engineer.modles: Extra inputs are not permitted"],
        ),
        (
            {"team.yaml": GOOD + "    guards: {injection: {action: shout}}\n"},
            [
                "team.yaml line 10: roles.engineer.guards.injection.action: "
                "Input should be 'block', 'sanitize' or 'flag'"
            ],
        ),
        (
            {"team.yaml": GOOD + "    guards: {injection: {threshold: 1.5}}\n"},
            [
                "team.yaml line 10: roles.engineer.guards.injection.threshold: "
                "Input should be less than or equal to 1"
            ],
        ),
        (
            {"team.yaml": GOOD + "    endpoints: [chat]\n"},
            [
                "team.yaml line 10: roles.engineer.endpoints[0]: "
                "Input should be 'chat.completions', 'completions' or 'models'"
            ],
        ),
        (
            {"team.yaml": GOOD + "    audit: {prompts: clear}\n"},
            ["team.yaml line 10: roles.engineer.audit.prompts: Input should be 'omit', 'hmac' or 'encrypt'"],
        ),
        (
            {"team.yaml": GOOD + "    cache: {enabled: 'yes'}\n"},
            ["team.yaml line 10: roles.engineer.cache.enabled: Input should be a valid boolean"],
        ),
        (
            {"team.yaml": GOOD.replace("{claim: groups, contains: eng}", "{claim: groups}")},
            ["team.yaml line 4: bindings[0].when: give exactly one of equals, contains, any_of"],
        ),
        (
            {
                "team.yaml": GOOD.replace(
                    "{claim: groups, contains: eng}", "[{claim: a, equals: 1}, {claim: 'b c', equals: 2}]"
                )
            },
            [
                "team.yaml line 4: bindings[0].when[1].claim: "
                "expected a claim name or dotted path, without spaces or empty parts"
            ],
        ),
        (
            {"team.yaml": GOOD.replace("roles: [engineer]", "roles: []")},
            ["team.yaml line 5: bindings[0].roles: give at least one item"],
        ),
        (
            {"team.yaml": GOOD.replace("  engineer:\n", "  'bad role':\n")},
            [
                "team.yaml line 7: roles.bad role: "
                "expected a name of up to 64 letters, digits, '_' or '-', starting with a letter"
            ],
        ),
        (
            {"team.yaml": GOOD.replace("roles: [engineer]", "roles: [engineer, enginer]")},
            ["team.yaml line 5: bindings[0].roles[1]: role 'enginer' is not defined in any policy file"],
        ),
        (
            {"team.yaml": GOOD + "    max_tokens: 8192\n"},
            ["team.yaml line 10: roles.engineer.max_tokens: duplicate key (first at line 9)"],
        ),
        (
            {"team.yaml": GOOD.replace("roles:\n  engineer:", "roles:\n  engineer: [")},
            ["team.yaml line 9: invalid YAML: expected ',' or ']', but got '<scalar>'"],
        ),
        (
            {"team.yaml": GOOD.replace("version: 1", "version: 2")},
            ["team.yaml line 1: version: unsupported format version; this gateway reads 1"],
        ),
        (
            {"team.yaml": GOOD.replace("version: 1", "version: true")},
            ["team.yaml line 1: version: unsupported format version; this gateway reads 1"],
        ),
        (
            {"team.yaml": GOOD.replace("version: 1\n", "")},
            ["team.yaml line 1: version: missing; add 'version: 1' at the top"],
        ),
        ({"team.yaml": ""}, ["team.yaml: the file is empty; a policy file starts with 'version: 1'"]),
        ({"team.yaml": "- version: 1\n"}, ["team.yaml line 1: expected a mapping with 'version: 1' first"]),
        ({"team.yaml": b"version: 1\n# \xff\n"}, ["team.yaml: not UTF-8 text (byte 13)"]),
        ({"team.yml": GOOD}, ["team.yml: policy files end in .yaml; rename it"]),
        (
            {
                "a.yaml": GOOD,
                "b.yaml": "version: 1\nroles:\n  other: {max_tokens: 1}\n  engineer: {max_tokens: 2}\n",
            },
            ["b.yaml line 4: roles.engineer: role 'engineer' is also defined in a.yaml line 7"],
        ),
        (
            {"a.yaml": GOOD, "b.yaml": GOOD.replace("  engineer:", "  other:")},
            ["b.yaml line 3: bindings[0].name: binding 'eng' is also defined in a.yaml line 3"],
        ),
        (
            {"a.yaml": "version: 1\ntenant: {claim: org}\n", "b.yaml": GOOD + "tenant:\n  claim: tenant\n"},
            ["b.yaml line 10: tenant: already defined in a.yaml line 2; define the tenant in one file only"],
        ),
    ],
)
def test_load_errors_name_file_line_and_field(
    tmp_path: Path, files: dict[str, str | bytes], expected: list[str]
) -> None:
    assert load_errors(write(tmp_path / "policies", files)) == expected


def test_errors_of_every_file_are_reported_at_once(tmp_path: Path) -> None:
    directory = write(
        tmp_path,
        {
            "a.yaml": GOOD.replace("4096", "-1") + "    sampling: {n_max: 0, stream: true}\n",
            "b.yaml": "version: 1\nroles: {x: [\n",
        },
    )
    assert load_errors(directory) == [
        "a.yaml line 9: roles.engineer.max_tokens: Input should be greater than 0",
        "a.yaml line 10: roles.engineer.sampling.n_max: Input should be greater than 0",
        "a.yaml line 10: roles.engineer.sampling.stream: Extra inputs are not permitted",
        "b.yaml line 3: invalid YAML: expected the node content, but found '<stream end>'",
    ]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("empty", "no *.yaml policy files; with no policy nothing would be allowed"),
        ("missing", "not a directory"),
        ("only-subdir", "no *.yaml policy files"),
    ],
)
def test_a_directory_without_policy_files_is_refused(tmp_path: Path, setup: str, expected: str) -> None:
    directory = tmp_path / "policies"
    if setup != "missing":
        directory.mkdir()
    if setup == "only-subdir":
        write(directory / "examples", {"team.yaml": GOOD})
    (error,) = load_errors(directory)
    assert error.startswith(str(directory))
    assert expected in error


def test_files_merge_in_name_order_and_subdirectories_and_dotfiles_are_ignored(tmp_path: Path) -> None:
    second = "version: 1\nbindings:\n  - {name: later, when: {claim: a, equals: b}, roles: [engineer]}\n"
    directory = write(
        tmp_path,
        {
            "20-roles.yaml": GOOD,
            "100-more.yaml": second,  # "100-" sorts before "20-": names, not numbers
            ".#20-roles.yaml": "not: [valid",
            "examples/broken.yaml": "not: [valid",
            "notes.txt": "ignored",
        },
    )
    loaded = load_policy_dir(directory)
    assert loaded.files == ("100-more.yaml", "20-roles.yaml")
    assert [b.name for b in loaded.document.bindings] == ["later", "eng"]
    assert list(loaded.document.roles) == ["engineer"]


def test_yaml_merge_keys_may_be_overridden_without_a_duplicate_key_error(tmp_path: Path) -> None:
    shared = GOOD + (
        "  base: &base\n    models: [m-*]\n    max_tokens: 10\n  derived:\n    <<: *base\n    max_tokens: 5\n"
    )
    roles = load_policy_dir(write(tmp_path, {"p.yaml": shared})).document.roles
    assert (roles["derived"].models, roles["derived"].max_tokens) == (("m-*",), 5)


def test_document_is_read_only(tmp_path: Path) -> None:
    loaded = load_policy_dir(write(tmp_path, {"p.yaml": GOOD}))
    with pytest.raises(TypeError):
        loaded.document.roles["admin"] = loaded.document.roles["engineer"]  # type: ignore[index]
    assert loaded.document.roles["engineer"].models == ("llama-*",)


def test_version_follows_content_and_names(tmp_path: Path) -> None:
    directory = write(tmp_path, {"p.yaml": GOOD})
    first = load_policy_dir(directory).version
    assert len(first) == 16 and int(first, 16) >= 0
    assert load_policy_dir(directory).version == first
    (directory / "p.yaml").write_text(GOOD.replace("4096", "4095"))
    changed = load_policy_dir(directory).version
    assert changed != first
    (directory / "p.yaml").rename(directory / "q.yaml")
    assert load_policy_dir(directory).version not in (first, changed)


def test_fingerprint_sees_added_changed_and_removed_files(tmp_path: Path) -> None:
    directory = write(tmp_path, {"p.yaml": GOOD})
    seen = {fingerprint(directory)}
    write(directory, {"q.yaml": "version: 1\n"})
    seen.add(fingerprint(directory))
    (directory / "q.yaml").write_text("version: 1\n# longer\n")
    seen.add(fingerprint(directory))
    (directory / "q.yaml").unlink()
    os.utime(directory / "p.yaml", ns=(1, 1))
    seen.add(fingerprint(directory))
    assert len(seen) == 4
    assert fingerprint(tmp_path / "gone") != fingerprint(directory)


def counters(store: PolicyStore) -> tuple[int, int, str | None]:
    return store.reloads_ok, store.reloads_failed, store.last_error


def test_reload_keeps_the_last_good_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = write(tmp_path, {"p.yaml": GOOD})
    store = PolicyStore(directory)
    good = store.current
    assert store.reload() is False  # same content: nothing to swap
    assert counters(store) == (1, 0, None)

    (directory / "p.yaml").write_text(GOOD.replace("4096", "lots"))
    with caplog.at_level(logging.WARNING, logger="gateway.policy.store"):
        assert store.reload() is False
    assert store.current is good
    assert store.last_error == "p.yaml line 9: roles.engineer.max_tokens: Input should be a valid integer"
    assert store.reloads_failed == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert good.version in warnings[0].getMessage()
    assert "roles.engineer.max_tokens" in warnings[0].getMessage()

    (directory / "p.yaml").write_text(GOOD.replace("4096", "2048"))
    assert store.reload() is True
    assert store.current is not good
    assert store.current.document.roles["engineer"].max_tokens == 2048
    assert counters(store) == (2, 1, None)


def test_store_refuses_to_start_on_a_bad_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="nothing would be allowed"):
        PolicyStore(write(tmp_path, {}))


def test_concurrent_reloads_always_leave_a_complete_policy(tmp_path: Path) -> None:
    directory = write(tmp_path, {"p.yaml": GOOD})
    store = PolicyStore(directory)

    def reload_many() -> None:
        for _ in range(20):
            store.reload()

    threads = [threading.Thread(target=reload_many) for _ in range(3)]
    for thread in threads:
        thread.start()
    for index in range(20):
        (directory / "p.yaml").write_text(GOOD.replace("4096", str(100 + index)))
        current = store.current
        assert current.files == ("p.yaml",)
        assert current.document.roles["engineer"].max_tokens in {4096, *range(100, 120)}
    for thread in threads:
        thread.join()
    store.reload()
    assert store.current.document.roles["engineer"].max_tokens == 119


def test_watch_reloads_on_change_and_survives_a_broken_file(tmp_path: Path) -> None:
    directory = write(tmp_path, {"p.yaml": GOOD})
    store = PolicyStore(directory)
    first = store.current.version

    async def scenario() -> tuple[str, str | None, str]:
        task = asyncio.create_task(store.watch(0.01))
        try:
            (directory / "p.yaml").write_text(GOOD + "    bogus: 1\n")
            await wait_until(lambda: store.reloads_failed == 1)
            broken = (store.current.version, store.last_error)
            (directory / "p.yaml").write_text(GOOD.replace("4096", "1000"))
            await wait_until(lambda: store.current.version != first)
            return broken[0], broken[1], store.current.version
        finally:
            task.cancel()

    kept, error, swapped = asyncio.run(scenario())
    assert kept == first
    assert error is not None and "roles.engineer.bogus" in error
    assert swapped == load_policy_dir(directory).version
    assert store.last_error is None


async def wait_until(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)
