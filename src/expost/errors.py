"""Domain errors. Library code raises these; the CLI turns them into one message and exit 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: the command stops as on Ctrl-C (workers ended, completed runs cached), exit 143."""


class ExpostError(Exception):
    """Base class: a problem the user can fix. The message names the file/field/flag and the fix."""


class WorkspaceError(ExpostError):
    """No workspace, or a workspace file that cannot be read."""


class SpecError(ExpostError):
    """An experiment's result spec is invalid (raised at load, before any run)."""


class ConfigError(ExpostError):
    """A --set / --where / --seeds value does not fit the experiment's parameters."""


class ResultError(ExpostError):
    """A result set was asked for something it does not hold."""


class NoRunsError(ResultError):
    """A selection holds no runs (not run yet, failed, or excluded by --where)."""


class MissingRunsError(ExpostError):
    """Rendering needs runs that are not in the cache."""

    def __init__(self, message, missing=()):
        super().__init__(message)
        self.missing = list(missing)


class RunFailures(ExpostError):
    """One or more runs failed; every completed run is cached."""

    def __init__(self, failures):
        self.failures = list(failures)
        lines = [f"{len(self.failures)} run(s) failed:"]
        for f in self.failures:
            log = f" (log: {f.log})" if f.log else ""
            lines.append(f"  {f.experiment} [{f.config_label}] seed {f.seed}: {f.error}{log}")
        lines.append("Completed runs are cached; fix the error and run again to finish the rest.")
        super().__init__("\n".join(lines))


class DiskError(WorkspaceError):
    """A write failed for lack of space or permission: names the folder and what to do."""

    @classmethod
    def writing(cls, e: OSError, folder, what: str) -> "DiskError":
        fix = {"No space left on device": "free some space (or set EXPOST_CACHE_DIR to a disk with room)",
               "Disk quota exceeded": "free some space within your quota",
               "Read-only file system": "point EXPOST_CACHE_DIR at a writable folder"}.get(
            e.strerror or "", "check the folder's permissions")
        return cls(f"cannot write {what} in {folder} ({e.strerror}); {fix}. Nothing was left half-written; "
                   "completed runs are cached.")


class TemplateError(ExpostError):
    """A post template is invalid: names the template file and line."""


class PublishError(ExpostError):
    """An export or publish step was refused."""


class AdoptError(ExpostError):
    """A file given to `expost adopt` cannot be turned into an experiment: names the file and the fix."""


class ExecutorError(ExpostError):
    """Runs cannot go where they were sent: a Dask scheduler that does not answer, a bad [executor]
    table in expost.toml, a missing extra. Names the flag or field, the address and the fix."""


class DiffError(ExpostError):
    """`expost diff` cannot compare: an unknown revision, a post not committed there, a workspace
    outside git. Names the revision or post and the fix."""
