"""Test set-up shared by every test.

Airflow reads its configuration when first imported, so the environment is set here, before any test
module imports it: a throw-away AIRFLOW_HOME and SQLite DB, the project's dags/ folder, no examples.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="pushtrain-test-airflow-"))

os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT_ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
# A CLI call in a test never tells an Airflow that happens to run on this machine (the demo's) of its change:
# nothing listens on the discard port. Tests under a real scheduler point it at their own instance.
os.environ["PUSHTRAIN_AIRFLOW_URL"] = "http://127.0.0.1:9"

for path in (PROJECT_ROOT / "plugins", PROJECT_ROOT / "dags"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def templates_dir() -> Path:
    return PROJECT_ROOT / "include" / "model_templates"
