"""The workspace: one folder holding the registry (by default), checkpoints and reports.

Resolution order: `--workspace` / `--db` flags, then `UNIMMAD_HOME` / `UNIMMAD_DB`, then
`./unimmad-workspace` and `sqlite:///<workspace>/registry.db` (the CLI applies the first two).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from registry.store import Registry, get_data_root, open_registry
from unimmad_cl.errors import UserError

DEFAULT_WORKSPACE = "unimmad-workspace"
REGISTRY_FILE = "registry.db"
DATA_FOLDER = "data"
# Per-stage evaluation summaries (mean metrics and MoE-Leader usage per task), written by
# the training engine and read by `report`.
EVALUATIONS_DIR = "evaluations"


def evaluation_summary_path(workspace: Path, stage: int) -> Path:
    return Path(workspace) / EVALUATIONS_DIR / f"stage_{stage:03d}.json"


@dataclass(frozen=True)
class Workspace:
    path: Path
    db_url: str

    @classmethod
    def resolve(cls, workspace: str | Path | None = None, db_url: str | None = None) -> Workspace:
        path = Path(workspace or DEFAULT_WORKSPACE).expanduser().resolve()
        return cls(path, db_url or f"sqlite:///{path / REGISTRY_FILE}")

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create workspace {self.path}: {exc.strerror}") from None

    def open_registry(self, *, upgrade: bool = True) -> Registry:
        """The registry of this workspace, migrated to the newest schema unless `upgrade` is
        False; creates the workspace folder first."""
        self.create()
        return open_registry(self.db_url, upgrade=upgrade)

    def data_root(self, registry: Registry) -> Path:
        """Where task data lives by default: set by `init --data-root`, else <workspace>/data."""
        stored = get_data_root(registry)
        return Path(stored) if stored else self.path / DATA_FOLDER
