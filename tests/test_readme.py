"""The README stays true: every settings key, CLI command and the benchmark table are in it."""

from __future__ import annotations

from router import config
from router.cli import build_parser
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_every_settings_key_is_documented_with_its_default() -> None:
    for key, default, _ in config.keys():
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert f"| `{key}` | `{shown}` |" in README, f"{key} (default {shown}) missing from README"


def test_every_cli_command_and_serve_flag_is_documented() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        assert f"tensorgate {name}" in README
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert flag in README, f"tensorgate {name} {flag} missing from README"
    for name in ("register", "list", "remove"):
        assert f"tensorgate models {name}" in README


def test_readme_has_the_two_commands_and_a_benchmark_table() -> None:
    assert "make run" in README and "make test" in README
    assert "BENCHMARK_TABLE" not in README
    assert "| group | scenario | workload | load | req/s |" in README
    assert "python -m benchmarks.suite" in README and "| goal | value | target | verdict |" in README
