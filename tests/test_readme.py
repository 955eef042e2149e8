"""The README's commands work as written and the files it names exist.

Every command line of a ```bash block is checked without data: ``make TARGET`` names a Makefile target; a
``python tools/X.py`` (or ``torchrun ... tools/X.py``) line names an existing tool, its ``--help`` (of
the subcommand, if any) runs and lists every ``--option`` the line uses, and a line with a config file
or a checkpoint runs with ``--print-config`` (placeholders replaced as a reader would: CKPT by a
checkpoint, the demo's checkpoint by one like it), so its config and overrides resolve. The tools run
in this process (each import of torch in a subprocess would cost seconds). Lines that need data, a
network or a shell session are listed in :data:`SKIPPED` with the reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import torch

from detr2d.runtime.cli import load_task_config
from detr2d.runtime.tasks import build_task

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DEMO_CHECKPOINT = "work_dirs/demo/checkpoint.pth"
#: Placeholder words of the README's commands, replaced by what a reader would pass (DEMO: the fixture's
#: checkpoint of the demo's model, standing in for the one `make demo` writes).
PLACEHOLDERS = {
    "CKPT": "DEMO",
    "CHECKPOINT": "DEMO",
    DEMO_CHECKPOINT: "DEMO",
    "model.num_classes=K": "model.num_classes=5",
}
#: Commands not run (only checked as far as stated), by their first words, with the reason.
SKIPPED = {
    "pip install": "installs from the network; its packages must be an extra of setup.py (tested)",
    "source .venv/bin/activate": "a shell's venv set-up; the venv is the Makefile's VENV",
}


def _commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks of ``text``, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += [re.sub(r"(^|\s+)#.*", "", line).strip() for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line]


def _tool_args(words: list[str]) -> tuple[str, list[str]] | None:
    """``(tools/X.py, its arguments)`` of a ``python`` / ``torchrun`` command, else None."""
    tools = [i for i, word in enumerate(words) if word.startswith("tools/") and word.endswith(".py")]
    if words[0] not in ("python", "torchrun") or not tools:
        return None
    return words[tools[0]], words[tools[0] + 1 :]


COMMANDS = _commands(README)
TOOL_LINES = [line for line in COMMANDS if _tool_args(shlex.split(line))]


def _run_tool(tool: str, args: list[str]) -> tuple[int, str, str]:
    """Run ``tools/<tool>`` as ``__main__`` in this process: (exit status, stdout, stderr). The process
    state a tool changes (argv, sys.path, grad mode) is restored."""
    out, err = io.StringIO(), io.StringIO()
    argv, path = sys.argv, list(sys.path)
    sys.argv = [str(REPO / tool), *args]
    code: int | str | None = 0
    try:
        with torch.enable_grad(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(REPO / tool), run_name="__main__")
    except SystemExit as error:
        code = error.code
    finally:
        sys.argv, sys.path[:] = argv, path
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A checkpoint like the one `make demo` writes: the demo's model with the config it was trained with."""
    config = load_task_config(REPO / "configs/detr2d/demo.py", ["data.root=data/synthetic_coco"])
    path = tmp_path_factory.mktemp("demo") / "checkpoint.pth"
    model = build_task(config).build_model()
    torch.save({"model": model.state_dict(), "config": config, "task": config["task"]}, path)
    return str(path)


def test_the_readme_has_the_commands_this_test_checks() -> None:
    assert {"make demo", "make demo-bev", f"python tools/test.py {DEMO_CHECKPOINT}"} <= set(COMMANDS)
    assert any(line.startswith(f"python tools/predict.py {DEMO_CHECKPOINT} ") for line in COMMANDS)
    assert len(TOOL_LINES) >= 10


def test_every_make_target_of_the_readme_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))
    used = {word for line in COMMANDS if line.startswith("make ") for word in shlex.split(line)[1:]}
    used = {word for word in used if "=" not in word}  # make VAR=value
    assert used and used <= targets, used - targets
    # inline `make X` mentions too
    inline = set(re.findall(r"`make ([\w-]+)", README))
    assert inline <= targets, inline - targets
    assert re.search(r"^VENV \?= \.venv$", makefile, re.M)  # `source .venv/bin/activate`


def test_every_command_line_is_checked_or_skipped_with_a_reason() -> None:
    for line in COMMANDS:
        words = shlex.split(line)
        checked = words[0] == "make" or _tool_args(words) is not None
        skipped = any(line.startswith(prefix) for prefix in SKIPPED)
        assert checked or skipped, f"README command not checked: {line!r}"


def test_packages_the_readme_installs_are_an_extra_of_setup_py() -> None:
    extras = re.search(r"extras_require=\{(.*?)\}", (REPO / "setup.py").read_text(), re.S)
    assert extras, "setup.py has no extras_require"
    named = set(re.findall(r'"([A-Za-z][\w.-]*?)(?:[<>=!~].*?)?"', extras.group(1)))
    lines = [shlex.split(line)[2:] for line in COMMANDS if line.startswith("pip install")]
    packages = {word for line in lines for word in line if not word.startswith("-")}
    assert packages and packages <= named, packages - named


@pytest.mark.parametrize("line", TOOL_LINES, ids=lambda line: line.split("tools/", 1)[1][:50])
def test_a_tool_line_parses_and_resolves_its_config(line: str, demo_checkpoint: str) -> None:
    tool, args = _tool_args(shlex.split(line))
    assert (REPO / tool).is_file(), tool
    words = [PLACEHOLDERS.get(arg, arg) for arg in args]
    words = [demo_checkpoint if word == "DEMO" else word for word in words]
    first_option = next((i for i, word in enumerate(words) if word.startswith("-")), len(words))
    # the help of the tool (of its subcommand: the leading words that are not paths)
    leading = [word for word in words[:first_option] if not Path(word).suffix and "=" not in word]
    code, help_text, err = _run_tool(tool, [*leading, "--help"])
    assert code == 0 and help_text.startswith("usage:"), err
    for option in {word.split("=")[0] for word in words if word.startswith("--")}:
        assert option in help_text, f"{line!r}: {tool} has no {option}"
    if not any(word.endswith((".py", ".pth", ".pt")) for word in words):
        return  # no config: the help and options are what can be checked without data
    code, out, err = _run_tool(tool, [*words, "--print-config"])
    assert code == 0, f"{line!r}: {err}"
    config = json.loads(out)
    assert config["task"] in ("coco_detection", "nuscenes_detection") and config["model"]["name"]
    overrides = [word for word in words if re.match(r"^[a-z_.]+=", word) and not word.startswith("--")]
    for override in overrides:
        key, _, value = override.partition("=")
        node = config
        for part in key.split("."):
            node = node[part]
        assert str(node) == value or node == json.loads(value.lower()), override


def _named_files() -> set[str]:
    """Repository files the README names: paths under the project's folders and top-level files, and
    the targets of its relative links."""
    folders = "ops|detr2d|bev|datasets|configs|tools|tests"
    names = set(re.findall(rf"(?<![\w/.])((?:{folders})/[\w./-]*\w\.(?:py|sh|h|cu|cpp|json|md))\b", README))
    names |= {link for link in re.findall(r"\]\(([^)#:]+)\)", README)}
    names |= set(re.findall(r"`((?:BENCHMARKS|README)\.md|Makefile|setup\.py|pyproject\.toml)`", README))
    return names


def test_every_file_the_readme_names_exists() -> None:
    names = _named_files()
    assert {"tools/demo.sh", "BENCHMARKS.md", "ops/csrc/ms_deform_attn_math.h"} <= names
    missing = sorted(name for name in names if not (REPO / name).exists())
    assert not missing, f"named in README.md but not in the repository: {missing}"


def test_the_layout_lists_every_tool() -> None:
    layout = README.split("## Layout", 1)[1]
    line = re.search(r"^tools/ +(.*(?:\n {17}.*)*)", layout, re.M)
    assert line, "the Layout section has no tools/ line"
    listed = set(re.findall(r"[\w]+\.(?:py|sh)", line.group(1)))
    present = {path.name for path in (REPO / "tools").iterdir() if path.suffix in (".py", ".sh")}
    assert listed == present, (
        f"tools/ files the Layout does not list: {sorted(present - listed)}; listed but absent: "
        f"{sorted(listed - present)}"
    )
