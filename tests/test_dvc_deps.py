"""dvc.yaml lists every ``ser`` module a stage runs, so ``dvc repro`` never says "up to date"
while an output is stale.

For each stage, the ``stages/<name>.py`` script of its cmd is parsed with ``ast``; every import of
a ``ser`` module (at module level or inside a function, plus ``importlib.import_module("ser....")``
with a literal name) is followed recursively through the ``ser`` package. Importing ``ser.a.b``
also runs ``ser/__init__.py`` and ``ser/a/__init__.py``, so those count too. Each file of that
closure must lie under a dep of the stage (a folder dep covers everything below it).
"""

from __future__ import annotations

import ast
import compileall
import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "ser"


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _module_file(module: str) -> Path | None:
    """``ser.x.y`` -> ser/x/y.py or ser/x/y/__init__.py (None when neither exists)."""
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(module: str) -> list[str]:
    """``ser.a.b`` -> [ser, ser.a, ser.a.b]: importing a module runs its parent packages."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _resolve_relative(level: int, module: str | None, current: str, is_package: bool) -> str:
    package = current if is_package else current.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{module}" if module else package


def _imported_modules(path: Path, current: str | None) -> set[str]:
    """Every ``ser`` module named by an import in ``path`` (anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if current is None:
                    continue
                base = _resolve_relative(node.level, node.module, current, is_package)
            else:
                base = node.module or ""
            found.add(base)
            # ``from ser.pkg import name``: name may be a submodule.
            for alias in node.names:
                if alias.name != "*":
                    found.add(f"{base}.{alias.name}")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            found.add(node.args[0].value)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def ser_closure(script: Path) -> set[Path]:
    """The files of every ``ser`` module ``script`` imports, transitively."""
    files: set[Path] = set()
    seen: set[str] = set()
    pending = [(script, None)]
    while pending:
        path, current = pending.pop()
        for imported in _imported_modules(path, current):
            for module in _with_parents(imported):
                if module in seen:
                    continue
                seen.add(module)
                target = _module_file(module)
                if target is None:  # a name imported from a module, not a module
                    continue
                files.add(target)
                pending.append((target, module))
    return files


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def package_data_used(modules: set[Path]) -> set[Path]:
    """Non-Python files under ``ser/`` (templates, static pages...) that one of ``modules`` names
    in a string literal: by the name of the folder holding it (``PackageLoader("ser", "templates")``,
    ``Path(__file__).parent / "static"``) or by a path ending in ``<folder>/<file>``. A bare file
    name is not enough: ``"index.html"`` is as often a file the code writes."""
    constants: set[str] = set()
    for module in modules:
        constants |= _string_constants(module)
    used = set()
    for data in (REPO_ROOT / PACKAGE).rglob("*"):
        if not data.is_file() or data.suffix in (".py", ".pyc") or "__pycache__" in data.parts:
            continue
        folders = data.relative_to(REPO_ROOT / PACKAGE).parts[:-1]
        if not folders:
            continue
        tail = f"{folders[-1]}/{data.name}"
        if folders[-1] in constants or any(constant.endswith(tail) for constant in constants):
            used.add(data)
    return used


def _stage_script(cmd: str) -> Path:
    match = re.search(r"\bstages/[\w/]+\.py\b", cmd)
    assert match, f"no stages/<name>.py script in cmd {cmd!r}"
    return REPO_ROOT / match.group(0)


def _covered(file: Path, deps: list[str]) -> bool:
    relative = file.relative_to(REPO_ROOT).as_posix()
    for dep in deps:
        dep = dep.rstrip("/")
        if relative == dep or relative.startswith(dep + "/"):
            return True
    return False


STAGES = _stages()


def test_closure_follows_lazy_and_nested_imports() -> None:
    """The analysis itself: a stage that builds models reaches the lazily imported Keras module
    (``importlib.import_module``) and the package ``__init__`` files."""
    closure = {p.relative_to(REPO_ROOT).as_posix() for p in ser_closure(REPO_ROOT / "stages" / "train.py")}
    assert {"ser/__init__.py", "ser/models/__init__.py", "ser/models/keras_models.py",
            "ser/training/train.py"} <= closure


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_imported_code(name: str) -> None:
    stage = STAGES[name]
    deps = [str(dep) for dep in stage.get("deps", [])]
    script = _stage_script(stage["cmd"])
    assert script.relative_to(REPO_ROOT).as_posix() in deps, f"{name}: the stage script itself is not a dep"
    missing = sorted(f.relative_to(REPO_ROOT).as_posix() for f in ser_closure(script) if not _covered(f, deps))
    assert not missing, f"stage {name!r} runs code that dvc.yaml does not list as deps: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_package_data(name: str) -> None:
    """A template or other data file that the stage's code reads is a dep as well."""
    stage = STAGES[name]
    deps = [str(dep) for dep in stage.get("deps", [])]
    used = package_data_used(ser_closure(_stage_script(stage["cmd"])))
    missing = sorted(f.relative_to(REPO_ROOT).as_posix() for f in used if not _covered(f, deps))
    assert not missing, f"stage {name!r} reads package data that dvc.yaml does not list as deps: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_code_dep_is_code_the_stage_runs(name: str) -> None:
    """No stale ``ser`` dep (a module the stage stopped importing): it would rerun the stage for
    nothing."""
    stage = STAGES[name]
    closure = ser_closure(_stage_script(stage["cmd"]))
    closure |= package_data_used(closure)
    unused = [str(dep) for dep in stage.get("deps", []) if str(dep).startswith(PACKAGE + "/")
              and not any(_covered(f, [str(dep)]) for f in closure)]
    assert not unused, f"stage {name!r} lists deps it does not run: {unused}"


def test_bytecode_does_not_change_a_folder_dep_hash(tmp_path: Path) -> None:
    """``.dvcignore`` keeps ``__pycache__``/``*.pyc`` out of the hash DVC computes for a folder
    dep, so importing the package (or running the tests) never makes a stage look changed."""
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    Repo.init(str(tmp_path), no_scm=True)
    shutil.copy(REPO_ROOT / ".dvcignore", tmp_path / ".dvcignore")
    folder = tmp_path / PACKAGE / "models"
    shutil.copytree(REPO_ROOT / PACKAGE / "models", folder, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))

    def dep_hash() -> tuple[str, int]:
        repo = Repo(str(tmp_path))
        try:
            _, meta, obj = build(repo.cache.local, str(folder), repo.fs, "md5", ignore=repo.dvcignore,
                                 dry_run=True)
        finally:
            repo.close()
        return obj.hash_info.value, meta.nfiles

    before = dep_hash()
    assert before[1] == len(list(folder.glob("*.py")))
    assert compileall.compile_dir(str(folder), quiet=1, force=True)
    (folder / "stray.pyc").write_bytes(b"bytecode")
    assert list(folder.glob("__pycache__/*.pyc"))
    assert dep_hash() == before


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_exist_and_skip_tests(name: str) -> None:
    """Every code dep is a path in the repository (a typo would fail ``dvc repro``) and no stage
    depends on the test suite."""
    for dep in STAGES[name].get("deps", []):
        dep = str(dep)
        assert not dep.startswith("tests"), f"{name}: tests/ is not stage code"
        if dep.startswith(("ser", "stages")):
            assert (REPO_ROOT / dep).exists(), f"{name}: dep {dep} does not exist"


def test_serving_settings_never_retrain_the_model():
    """Windowing and serving settings are applied when a model is loaded and when the evaluate
    stage registers the served model, so changing one re-runs no training."""
    stages = _stages()
    for name in ("train", "crosscorpus"):
        read = [str(p) for p in stages[name].get("params", [])]
        assert not [p for p in read if p.split(".")[0] in ("predict", "serve")], (name, read)
    assert {"predict", "serve.max_bytes", "serve.allow_path", "serve.path_root"} <= set(stages["evaluate"]["params"])
