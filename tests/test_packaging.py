"""The package as a user installs it: one top-level name in site-packages, a lean core whose optional parts
(extras) are named in one line when missing, ``python -m nearest_prompt``, and the built wheel working in
a fresh virtual environment from a folder that holds packages named like ours used to be."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .conftest import corpus_slice

ROOT = Path(__file__).resolve().parents[1]
OLD_TOP_LEVEL = ("common", "encoders", "composer", "evaluation", "service", "devkit", "indexer", "retriever",
                 "index_store")
SHADOWS = ("common", "service", "evaluation", "encoders")


def _shadow_folder(where: Path) -> Path:
    """A user's project folder holding its own packages named like ours used to be (each fails on import)."""
    where.mkdir(parents=True, exist_ok=True)
    for name in SHADOWS:
        (where / name).mkdir(exist_ok=True)
        (where / name / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name} package')\n")
    return where


def _one_error_line(p: subprocess.CompletedProcess, match: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nearest-prompt: error: ") and match in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_the_editable_install_adds_one_top_level_name():
    site = Path(sysconfig.get_paths()["purelib"])
    names = {p.name for p in site.iterdir()}
    assert not names & set(OLD_TOP_LEVEL), names & set(OLD_TOP_LEVEL)
    import nearest_prompt
    from nearest_prompt import indexer

    assert Path(nearest_prompt.__file__).parent == ROOT / "nearest_prompt"
    assert Path(indexer.__file__).resolve().parent == ROOT / "indexer"  # the top-level folder, inside the package
    from importlib.metadata import version

    assert nearest_prompt.__version__ == version("nearest-prompt")


def test_the_front_door_and_python_m(tmp_path):
    import nearest_prompt

    for name in ("Retriever", "build", "BuildConfig", "Composer", "ComposeOptions", "open_store", "Weighting",
                 "blend_predictions", "evaluate", "InputError", "StoreError"):
        assert getattr(nearest_prompt, name) is not None, name
    with pytest.raises(AttributeError):
        nearest_prompt.no_such_name  # noqa: B018
    p = subprocess.run([sys.executable, "-m", "nearest_prompt", "--version"], capture_output=True, text=True,
                       cwd=_shadow_folder(tmp_path / "project"))
    assert p.returncode == 0 and p.stdout.startswith(f"nearest-prompt {nearest_prompt.__version__} "), p.stderr


@pytest.mark.slow
def test_a_missing_extra_is_named_in_one_line_and_the_core_still_works(tmp_path, cli_store_path):
    """fastapi and matplotlib made unimportable: serve and eval name their extra; query works."""
    blockers = tmp_path / "blockers"
    for module in ("fastapi", "matplotlib"):
        (blockers / module).mkdir(parents=True)
        (blockers / module / "__init__.py").write_text(f'raise ImportError("No module named {module!r}")\n')
    env = {**os.environ, "PYTHONPATH": str(blockers), "HF_HUB_OFFLINE": "1"}
    exe = str(Path(sys.executable).parent / "nearest-prompt")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=300)

    _one_error_line(cli("serve", "--index", str(cli_store_path)),
                    "serve needs the 'serve' extra (fastapi cannot be imported: No module named 'fastapi'); "
                    "install it with: pip install 'nearest-prompt[serve]'")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,prompt\nx.png,a cat\n")
    _one_error_line(cli("eval", "--index", str(cli_store_path), "--pairs", str(pairs), "--report",
                        str(tmp_path / "r.json")), "pip install 'nearest-prompt[eval]'")
    assert not (tmp_path / "r.json").exists()
    p = cli("query", "--index", str(cli_store_path), "--text", "a red fox", "--k", "2", "--json", "-q")
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["results"][0]["neighbors"]) == 2
    p = cli("serve", "--help")  # help needs no extra
    assert p.returncode == 0 and "--index" in p.stdout, p.stderr


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_from_a_folder_with_shadowing_packages(tmp_path, cli_store_path, clip_spec):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the working tree
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", "runs", "build", "dist", ".git", "__pycache__", "*.egg-info", ".pytest_cache"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(source)], check=True, capture_output=True, timeout=600)
    [wheel] = dist.glob("nearest_prompt-*.whl")
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {n.split("/")[0] for n in names} == {"nearest_prompt", dist_info}
    for module in ("nearest_prompt/indexer/build.py", "nearest_prompt/retriever/api.py",
                   "nearest_prompt/index_store/reader.py", "nearest_prompt/service/static/index.html",
                   "nearest_prompt/__main__.py"):
        assert module in names, module
    assert not any("devkit" in n or n.startswith("tests/") for n in names)
    assert "License-Expression: MIT" in metadata
    core = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert not any(heavy in ln for ln in core for heavy in ("fastapi", "uvicorn", "matplotlib", "ray")), core

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    installed = {p.name for p in site.iterdir()} - {"__pycache__"}
    assert installed == {"nearest_prompt", dist_info}
    # the dependencies come from this project's environment (appended to the path, after the wheel's files)
    (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    project = _shadow_folder(tmp_path / "project")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"

    def run(*args: str) -> subprocess.CompletedProcess:
        p = subprocess.run(list(args), capture_output=True, text=True, cwd=project, env=env, timeout=600)
        assert p.returncode == 0, (args, p.stdout, p.stderr[-2000:])
        return p

    assert run(str(venv / "bin" / "nearest-prompt"), "--version").stdout.startswith("nearest-prompt 0.1.0")
    assert "prompts" in run(str(venv / "bin" / "nearest-prompt"), "info", "--index", str(cli_store_path)).stdout
    out = run(str(venv / "bin" / "nearest-prompt"), "query", "--index", str(cli_store_path), "--text", "a castle",
              "--k", "3", "--json", "-q").stdout
    assert len(json.loads(out)["results"][0]["neighbors"]) == 3
    (project / "prompts.txt").write_text("\n".join(corpus_slice(30, offset=9000)) + "\n")
    script = f"""
import nearest_prompt
from nearest_prompt import BuildConfig, Composer, Retriever, build
assert nearest_prompt.__file__.startswith({str(site)!r}), nearest_prompt.__file__
result = build(["prompts.txt"], "store", config=BuildConfig(clip_model={clip_spec!r}), progress=False)
r = Retriever.open("store")
q = r.embed_texts([r.prompts([4])[0]])
assert r.search(q, k=1).ids[0, 0] == 4
print(result.rows, Composer(r).options.mode)
"""
    rows, mode = run(str(py), "-c", script).stdout.split()
    assert int(rows) >= 25 and mode == "best"
