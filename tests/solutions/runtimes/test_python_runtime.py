"""The `python` runtime: loading `file.py:function` from a package, isolation, error mapping."""

from __future__ import annotations

import hashlib
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from lods.solutions.manifest import Manifest, manifest_from_dict
from lods.solutions.runtimes import get_runtime
from lods.solutions.runtimes.base import (
    PermanentRuntimeError,
    RunContext,
    TransientRuntimeError,
)
from lods.solutions.runtimes.python import PythonRuntime

ENGINE = """
from lods.solutions.runtimes.base import CodeRef, FindingResult, RunResult

def run(ctx):
    score = ctx.manifest.runtime.options["score"]
    finding = FindingResult(code=CodeRef("99LODS", "V1", "Vital sign alert"), score=score)
    return RunResult(findings=[finding], details={"job": ctx.job_id, "pulse": ctx.payload["pulse"]})
"""


def _package(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


def _manifest(package: Path, entry_point: str = "engine.py:run", **options: Any) -> Manifest:
    files = {
        p.relative_to(package).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(package.rglob("*.py"))
    }
    return manifest_from_dict(
        {
            "id": "toy.vitals",
            "name": "Vitals toy",
            "version": "1.0",
            "vendor": "Lods tests",
            "regulatory": {"status": "demonstration"},
            "intended_use": {"summary": "Scores vital signs in tests.", "input_kind": "vitals"},
            "runtime": {"kind": "python", "entry_point": entry_point, "options": options},
            "outputs": {
                "findings": [
                    {
                        "key": "alert",
                        "code": {"scheme": "99LODS", "value": "V1", "meaning": "Vital sign alert"},
                        "label": "Alert",
                    }
                ],
                "operating_points": {"sure": 0.8, "doubtful": 0.5},
            },
            "data_egress": {"kind": "none"},
            "files": files,
        }
    )


def _context(package: Path, manifest: Manifest, **overrides: Any) -> RunContext:
    values: dict[str, Any] = {
        "job_id": 7,
        "package_dir": package,
        "manifest": manifest,
        "study_uid": "",
        "images": [],
        "deadline": time.monotonic() + 60.0,
        "payload": {"pulse": 130},
    }
    values.update(overrides)
    return RunContext(**values)


def _with_entry_point(manifest: Manifest, entry_point: str) -> Manifest:
    """The manifest with an entry point its validation would refuse (defence in depth)."""
    runtime = manifest.runtime.model_copy(update={"entry_point": entry_point})
    return manifest.model_copy(update={"runtime": runtime})


def test_the_entry_point_is_called_with_the_context(tmp_path: Path) -> None:
    package = _package(tmp_path / "pkg", {"engine.py": ENGINE})
    manifest = _manifest(package, score=0.9)
    result = get_runtime("python").run(_context(package, manifest))
    (finding,) = result.findings
    assert finding.score == 0.9 and finding.code.value == "V1"
    assert result.details == {"job": 7, "pulse": 130}


def test_an_exception_becomes_a_permanent_error(tmp_path: Path) -> None:
    package = _package(
        tmp_path / "pkg",
        {"engine.py": "def run(ctx):\n    raise ValueError('pulse missing')\n"},
    )
    with pytest.raises(PermanentRuntimeError, match="ValueError: pulse missing"):
        PythonRuntime().run(_context(package, _manifest(package)))


def test_runtime_errors_of_the_entry_point_pass_through(tmp_path: Path) -> None:
    package = _package(
        tmp_path / "pkg",
        {
            "engine.py": """
            from lods.solutions.runtimes.base import TransientRuntimeError

            def run(ctx):
                raise TransientRuntimeError("monitor feed down")
            """
        },
    )
    with pytest.raises(TransientRuntimeError, match="monitor feed down"):
        PythonRuntime().run(_context(package, _manifest(package)))


def test_a_heartbeat_cancellation_is_not_turned_into_a_failure(tmp_path: Path) -> None:
    class Cancelled(Exception):
        pass

    def cancelled() -> None:
        raise Cancelled("job 7 was cancelled")

    package = _package(
        tmp_path / "pkg",
        {
            "engine.py": """
            def run(ctx):
                try:
                    ctx.heartbeat()
                except Exception as exc:
                    raise RuntimeError("wrapped by the vendor") from exc
            """
        },
    )
    with pytest.raises(Cancelled):
        PythonRuntime().run(_context(package, _manifest(package), heartbeat=cancelled))


def test_a_wrong_return_type_is_a_permanent_error(tmp_path: Path) -> None:
    package = _package(tmp_path / "pkg", {"engine.py": "def run(ctx):\n    return {'score': 1}\n"})
    with pytest.raises(PermanentRuntimeError, match="returned dict, not a RunResult"):
        PythonRuntime().run(_context(package, _manifest(package)))


def test_broken_or_incomplete_entry_files_are_permanent_errors(tmp_path: Path) -> None:
    broken = _package(tmp_path / "broken", {"engine.py": "def run(ctx)\n    return 1\n"})
    with pytest.raises(PermanentRuntimeError, match="cannot be loaded: SyntaxError"):
        PythonRuntime().run(_context(broken, _manifest(broken)))
    exits = _package(tmp_path / "exits", {"engine.py": "import sys\nsys.exit(3)\n"})
    with pytest.raises(PermanentRuntimeError, match="SystemExit"):
        PythonRuntime().run(_context(exits, _manifest(exits)))
    package = _package(tmp_path / "pkg", {"engine.py": ENGINE})
    with pytest.raises(PermanentRuntimeError, match="no function 'score'"):
        PythonRuntime().run(_context(package, _manifest(package, "engine.py:score")))


def test_paths_escaping_the_package_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    outside = f"from pathlib import Path\nPath({str(marker)!r}).touch()\ndef run(ctx):\n    pass\n"
    _package(tmp_path, {"x.py": outside})
    package = _package(tmp_path / "pkg", {"engine.py": ENGINE})
    manifest = _manifest(package)
    for entry_point in ("../x.py:run", f"{tmp_path / 'x.py'}:run", "sub/../../x.py:run"):
        with pytest.raises(PermanentRuntimeError, match="outside the package"):
            PythonRuntime().run(_context(package, _with_entry_point(manifest, entry_point)))
    (package / "link.py").symlink_to(tmp_path / "x.py")
    with pytest.raises(PermanentRuntimeError, match="outside the package"):
        PythonRuntime().run(_context(package, _with_entry_point(manifest, "link.py:run")))
    assert not marker.exists()


def test_an_entry_file_not_matching_the_manifest_is_refused(tmp_path: Path) -> None:
    package = _package(tmp_path / "pkg", {"engine.py": ENGINE})
    manifest = _manifest(package, score=0.2)
    (package / "engine.py").write_text(ENGINE.replace('["score"]', '["score"] + 0.5'))
    with pytest.raises(PermanentRuntimeError, match="does not match its SHA-256"):
        PythonRuntime().run(_context(package, manifest))


def test_two_versions_with_the_same_file_names_load_separately(tmp_path: Path) -> None:
    def version(name: str, score: float) -> tuple[Path, Manifest]:
        engine = f"""
        # version {name}
        from lods.solutions.runtimes.base import CodeRef, FindingResult, RunResult
        from . import helpers

        def run(ctx):
            code = CodeRef("99LODS", "V1", "Vital sign alert")
            return RunResult(findings=[FindingResult(code=code, score=helpers.SCORE)])
        """
        package = _package(
            tmp_path / name, {"engine.py": engine, "helpers.py": f"SCORE = {score}\n"}
        )
        return package, _manifest(package)

    runtime = PythonRuntime()
    v1, m1 = version("v1", 0.1)
    v2, m2 = version("v2", 0.9)
    assert runtime.run(_context(v1, m1)).findings[0].score == 0.1
    assert runtime.run(_context(v2, m2)).findings[0].score == 0.9
    assert runtime.run(_context(v1, m1)).findings[0].score == 0.1
    # the same folder with a different entry file (a reinstalled package) is loaded afresh
    (v1 / "engine.py").write_text(ENGINE)
    assert runtime.run(_context(v1, _manifest(v1, score=0.5))).findings[0].score == 0.5


def test_nested_entry_files_import_their_neighbours(tmp_path: Path) -> None:
    package = _package(
        tmp_path / "pkg",
        {
            "lib/engine.py": """
            from lods.solutions.runtimes.base import RunResult
            from .rules import THRESHOLD

            def run(ctx):
                return RunResult(study_score=THRESHOLD)
            """,
            "lib/rules.py": "THRESHOLD = 0.42\n",
        },
    )
    result = PythonRuntime().run(_context(package, _manifest(package, "lib/engine.py:run")))
    assert result.study_score == 0.42


def test_a_passed_deadline_is_a_transient_error(tmp_path: Path) -> None:
    package = _package(tmp_path / "pkg", {"engine.py": ENGINE})
    ctx = _context(package, _manifest(package, score=0.5), deadline=time.monotonic() - 1)
    with pytest.raises(TransientRuntimeError):
        PythonRuntime().run(ctx)
