"""The docs and the shipped configs, checked against the code so they cannot go stale.

* every ``configs/*.yaml`` is dry-run: the whole config read by the real config layer (every key
  checked, no key without effect), its data and model plans built without downloading (hub ids are
  checked for shape only), and its header says what it is for, the hardware, the time and the command;
* every error message the code can print appears in ``docs/troubleshooting.md``;
* every ``--flag`` and metric named in the README and ``docs/`` exists;
* every link into the code (``[x](../src/dpokit/logps.py)``, ``src/dpokit/x.py:symbol``) resolves.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "dpokit"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
MODEL_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # gpt2, owner/name


def _header(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines[: next((i for i, s in enumerate(lines) if not s.startswith("#")),
                                                     len(lines))])


def _command(path: Path) -> str:
    """``train`` or ``sft``: the dpokit command the header runs this file with."""
    found = re.search(r"dpokit (train|sft) (?:[^\s&;|]+ )*?" + re.escape(f"configs/{path.name}"), _header(path))
    assert found, f"{path.name}: the header names no `dpokit train|sft configs/{path.name}` command"
    return found.group(1)


@cache
def _outputs() -> frozenset[str]:
    """Where the shipped configs write their models: a later stage may start from one."""
    from dpokit import configure

    found = set()
    for path in CONFIGS:
        config, _, _ = configure.resolve([str(path)], _command(path))
        found.add(str(Path(config.output.dir) / "final"))
    return frozenset(found)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_dry_runs(path: Path, monkeypatch, tmp_path) -> None:
    from dpokit import configure
    from dpokit.data.mixture import parse_mixture
    from dpokit.data.presets import find_preset
    from dpokit.data.sources import eval_spec, main_spec, resolve_source

    header = _header(path)
    for label in ("what for:", "hardware:", "time:", "run:"):
        assert label in header.lower(), f"{path.name}: the header comment has no '{label}' line"
    command = _command(path)
    config, _, info = configure.resolve([str(path)], command)  # the real layer: unknown keys and values raise
    assert not info["unused"], f"{path.name}: keys with no effect in dpokit: {info['unused']}"
    assert not info["demo"]
    # The data plan: each source resolved (a preset to its hub id and split) without reading a row.
    monkeypatch.chdir(tmp_path)  # no local file of the checkout is mistaken for a source
    made = re.findall(r"--output (\S+)", header)  # files the header's commands make first
    for name in made:
        Path(name).write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n', encoding="utf-8")
    data = config.data
    if data.mixture:
        specs = [resolve_source(e.id, e.split, e.config, e.data_dir, e.format or data.format, e.columns)
                 for e in parse_mixture(data.mixture).datasets]
    else:
        specs = [main_spec(data)]
        if (evaluation := eval_spec(data, specs[0])) is not None:
            specs.append(evaluation)
    for spec in specs:
        assert spec.kind in ("hub", "json"), f"{path.name}: data source {spec.name} resolved to {spec.kind}"
        if spec.kind == "hub":
            assert MODEL_NAME.match(spec.location) and "/" in spec.location, spec.location
        if (preset := find_preset(spec.name)) is not None:
            assert spec.location == preset.hub_id
    # The model plan: a hub id of the right shape, or the output of another shipped config.
    for name in (config.model.name_or_path, config.model.ref_model):
        if name is not None and name != "tiny":
            assert name in _outputs() or (MODEL_NAME.match(name) and not Path(name).exists()), \
                f"{path.name}: model '{name}' is neither a hub id nor a shipped config's output"
    if config.model.load_in_4bit:
        assert config.model.lora and config.model.reference in ("auto", "lora", "precomputed")


# ---- every error message is in the troubleshooting page -------------------------------------------

ERRORS = {"DpokitError", "ConfigError", "DataError", "SaveError"}
MESSAGE_ARG = {**{name: 0 for name in ERRORS}, "RowProblem": 1, "_check": 1, "stop_unless": 1}
# Modules whose ValueErrors the config layer turns into `error: ...` lines (configure.build_config,
# recipes.convert).
VALUE_ERRORS = {"config.py", "data/mixture.py", "recipes.py"}


def _template(node: ast.AST) -> str | None:
    """A message expression as text with ``{}`` for what is filled in; None when it is not literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.IfExp):
        return _template(node.body)
    return None


def error_messages() -> list[tuple[str, str]]:
    """(where, message template) of every error the code raises with a literal message."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        module = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            index = MESSAGE_ARG.get(name)
            if name == "ValueError" and module in VALUE_ERRORS:
                index = 0
            if name == "_check" and module != "config.py":
                index = None
            if index is not None and len(node.args) > index:
                if (text := _template(node.args[index])) is not None:
                    found.append((f"src/dpokit/{module}:{node.lineno}", text))
        if module == "errors.py":  # the hints of OSErrors a user's path causes (`os_error_message`)
            from dpokit.errors import _OS_HINTS

            found += [(f"src/dpokit/{module}:_OS_HINTS", hint) for hint in _OS_HINTS.values()]
        if module == "recipes.py":  # the reasons of keys that stop a run, given as (key, why) pairs
            found += [(f"src/dpokit/{module}:{pair.lineno}", pair.elts[1].value) for pair in ast.walk(ast.parse(
                path.read_text(encoding="utf-8"))) if isinstance(pair, ast.Tuple) and len(pair.elts) == 2
                and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in pair.elts)
                and " " in pair.elts[1].value]
    return found


def key_phrases(message: str) -> list[str]:
    """What a page must quote of a message: its two longest literal stretches before the ``fix:`` (at
    most ten words each), so a message is found whatever is filled in; none when nothing literal is long."""
    head = message.split("\n  fix:")[0].split("\n")[0]
    parts = sorted((p.strip(" :;,.()[]'\"") for p in head.split("{}")), key=len, reverse=True)
    return [_norm(" ".join(p.split()[:10])) for p in parts[:2] if len(p) >= 8]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", "").replace("\\|", "|").replace("\\_", "_")).lower().strip()


def test_every_error_message_is_in_troubleshooting() -> None:
    page = _norm((ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8"))
    messages = error_messages()
    assert len(messages) > 100  # the collector still finds the code's messages
    missing = [(where, text, absent) for where, text in messages
               if (absent := [p for p in key_phrases(text) if p not in page])]
    rows = "\n".join(f"| `{text.split(chr(10))[0].replace('{}', '...').replace('|', chr(92) + '|')}` | "
                     f"CAUSE. FIX. |  <!-- {where}; must contain: {' / '.join(absent)} -->"
                     for where, text, absent in missing)
    assert not missing, f"{len(missing)} error messages are not in docs/troubleshooting.md; add rows:\n{rows}"


# ---- flags and metrics named in the docs exist ---------------------------------------------------

OTHER_TOOLS = ("torchrun", "tensorboard", "pip", "python", "accelerate", "srun", "sbatch", "make", "pytest",
               "wandb", "git", "ruff", "huggingface-cli", "hf ", "nvidia-smi", "uv ")


def _flags_of_parsers() -> set[str]:
    """Every option of every dpokit command (argparse ones, and the config keys of train / sft / data)."""
    import argparse

    from dpokit import cli

    names: set[str] = set()
    stack = [cli.build_parser()]
    while stack:
        parser = stack.pop()
        for action in parser._actions:
            names.update(o for o in action.option_strings if o.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return names


def _known_flag(flag: str, parsers: set[str]) -> bool:
    from dpokit import configure

    norm = flag[2:].split("=")[0].replace("-", "_")
    if flag.split("=")[0] in parsers or norm in configure.SWITCHES or norm in ("config", "help", "version"):
        return True
    return configure.lookup(norm) is not None


def _code_spans(text: str) -> list[str]:
    """The lines of fenced blocks that run dpokit (comments cut off), and every inline code span."""
    spans = [line.split(" #")[0] for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
             for line in block.splitlines() if re.search(r"\bdpokit \w", line)]
    spans.extend(re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S)))
    return spans


def _dpokit_flags(span: str) -> list[str]:
    if any(span.lstrip().startswith(t) for t in OTHER_TOOLS) and "dpokit" not in span:
        return []
    if "dpokit" in span:  # only what follows the dpokit command on a line that calls another tool first
        span = span[span.index("dpokit"):]
    return re.findall(r"(?<![\w-])--[a-z][a-z0-9_.-]*[a-z0-9](?:=\S*)?", span)


def test_every_flag_in_the_docs_exists() -> None:
    parsers, unknown = _flags_of_parsers(), []
    for page in PAGES:
        for span in _code_spans(page.read_text(encoding="utf-8")):
            unknown += [f"{page.name}: {f}" for f in _dpokit_flags(span) if not _known_flag(f, parsers)]
    assert not unknown, "flags named in the docs that no dpokit command has:\n" + "\n".join(sorted(set(unknown)))


METRIC = re.compile(r"^(?:eval_|train/|eval/)?((?:rewards|logps|logits|tokens|memory)/[a-z0-9_]+)$")


def _code_strings() -> list[re.Pattern]:
    """Every string the code writes, as a pattern (``{}`` matches what an f-string fills in)."""
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Constant, ast.JoinedStr)) and not isinstance(getattr(node, "value", ""), bytes):
                if (text := _template(node)) is not None and len(text) < 80:
                    found.add(text)
    return [re.compile(re.escape(t).replace(r"\{\}", r"\w*")) for t in found]


def _metric_table_names() -> list[str]:
    """The metrics named in the first column of docs/metrics.md's tables."""
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    return [name for row in re.findall(r"^\| *([^|\n]+?) *\|", text, flags=re.M)
            for name in re.findall(r"`([a-z_/0-9]+)`", row)]


def test_every_metric_in_the_docs_exists() -> None:
    patterns, unknown = _code_strings(), []
    names = {(page.name, m.group(1)) for page in PAGES for span in _code_spans(page.read_text(encoding="utf-8"))
             for word in span.split() if (m := METRIC.match(word.strip("`,.;:()")))}
    names |= {("metrics.md", n.removeprefix("eval_")) for n in _metric_table_names()}
    for page, name in sorted(names):
        if not any(p.fullmatch(name) for p in patterns):
            unknown.append(f"{page}: {name}")
    assert len(names) > 20
    assert not unknown, "metrics named in the docs that the code never logs:\n" + "\n".join(unknown)


# ---- links into the code resolve -----------------------------------------------------------------


def _defines(path: Path, symbol: str) -> bool:
    """``symbol`` (``name`` or ``Class.method``) is defined or assigned at the top of ``path``."""
    tree, (first, _, rest) = ast.parse(path.read_text(encoding="utf-8")), symbol.partition(".")
    for node in tree.body:
        names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) else [
            t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)]
        if first in names:
            if not rest:
                return True
            return any(getattr(n, "name", None) == rest for n in getattr(node, "body", []))
    return False


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings (and explicit ``<a id="...">``)."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
             for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
    return slugs | set(re.findall(r'<a id="([^"]+)"', text))


def test_every_code_link_resolves() -> None:
    broken, count = [], 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target, _, anchor in (t.partition("#") for t in re.findall(r"\]\(([^)\s]+)\)", text)):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            count += 1
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.name}: link to {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.name}: link to {target}#{anchor}: no such heading")
        for file, symbol in re.findall(r"`((?:src/dpokit|benchmarks|tests)/[\w/.]+\.py)(?::([\w.]+))?`", text):
            count += 1
            if not (ROOT / file).is_file():
                broken.append(f"{page.name}: {file} does not exist")
            elif symbol and not _defines(ROOT / file, symbol):
                broken.append(f"{page.name}: {file} defines no {symbol}")
    assert count > 20
    assert not broken, "\n".join(broken)


def test_every_yaml_example_in_the_docs_is_a_valid_config() -> None:
    import yaml

    from dpokit import configure, recipes

    checked = 0
    for page in PAGES:
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            where = f"{page.name}: the YAML example starting {block.splitlines()[0]!r}"
            flat = configure.flatten_yaml(yaml.safe_load(block), where)  # unknown keys raise, naming the page
            configure.build_config(recipes.finalize(flat))
            checked += 1
    assert checked >= 3


def test_readme_claims_the_benchmark_table_numbers() -> None:
    """The README's opening claim against TRL says what its benchmark table's defaults row says."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    claim = re.search(r"(\d+(?:\.\d+)?)x the (?:steady\s+)?pairs\s+per (?:CPU )?second of TRL's `DPOTrainer` at (\d+(?:\.\d+)?)x its"
                      r"\s+peak memory", text)
    row = re.search(r"^\| dpokit, its defaults[^\n]*\| (\d+(?:\.\d+)?)x \| (\d+(?:\.\d+)?)x \|$", text, flags=re.M)
    assert claim and row, "the README's opening claim or its benchmark table's 'dpokit, its defaults' row is gone"
    assert claim.groups() == row.groups(), f"opening says {claim.groups()}, the table {row.groups()}"
