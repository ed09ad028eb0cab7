"""Where the local stack keeps its files, in one place so every step agrees."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deployments.paths import PROJECT_ROOT, project_path  # noqa: F401 (re-exported)

DEFAULT_ROOT = PROJECT_ROOT / ".local"


@dataclass(frozen=True)
class StackPaths:
    root: Path = DEFAULT_ROOT

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def feast_repo(self) -> Path:
        return self.root / "feast"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow" / "mlflow.db"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlflow" / "artifacts"

    @property
    def triton_repo(self) -> Path:
        return self.root / "triton" / "models"

    @property
    def mlserver_repo(self) -> Path:
        return self.root / "mlserver" / "models"

    @property
    def triton_backends(self) -> Path:
        return self.root / "triton" / "backends"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def supervised(self) -> Path:
        """State files of the supervised local servers (local_stack/supervisor.py)."""
        return self.root / "run"
