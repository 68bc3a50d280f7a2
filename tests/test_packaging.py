"""The project's own files: packages agree, compose file is sound, generated files ignored."""

from __future__ import annotations

import re
import subprocess
import tomllib

import yaml

from anomaly.config import ROOT


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def test_pyproject_and_environment_yml_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    wanted |= {_name(r) for r in project["optional-dependencies"]["dev"]}

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {_name(r) for r in pip_section} == wanted


def test_design_card_packages_are_all_installed_by_the_project():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    card = {"jupyterlab", "papermill", "ray", "pyspark", "clickhouse-connect", "pandas",
            "numpy", "matplotlib", "nbval"}  # fmt: skip
    assert card <= names
    assert any(r.startswith("pandas") and "<3" in r for r in project["dependencies"])


def test_compose_runs_a_recent_clickhouse_on_loopback_with_a_volume_and_health_check():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["clickhouse"]
    assert re.fullmatch(r"clickhouse/clickhouse-server:2[6-9]\.\d+", service["image"])
    assert service["ports"] and all(p.startswith("127.0.0.1:") for p in service["ports"])
    volume = service["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]
    assert "ping" in " ".join(service["healthcheck"]["test"])


def test_generated_data_and_reports_are_ignored_by_git():
    for path in ("data/clickhouse/x", "reports/runs/x/summary.md", "data/events.parquet"):
        result = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert result.returncode == 0, f"{path} would be committed"
    for path in ("data/README.md", "reports/README.md"):
        result = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert result.returncode == 1, f"{path} should be committed"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev test" in readme
    assert "./dev test" in ci
