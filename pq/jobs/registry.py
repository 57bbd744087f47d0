"""The job registry: loads ``task_paths`` (with ``pkg.*`` wildcards) into name -> Job class."""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Iterable, Iterator

from ..exceptions import ImproperlyConfigured, TaskNotAvailable
from .job import Job


def _import(path: str) -> ModuleType:
    try:
        return importlib.import_module(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"task_paths entry {path!r} cannot be imported: {exc}") from exc


def iter_modules(paths: Iterable[str]) -> Iterator[ModuleType]:
    """The modules named by task_paths; ``pkg.*`` is every submodule of ``pkg``."""
    for path in paths:
        if path.endswith(".*"):
            package = _import(path[:-2])
            yield package
            for info in pkgutil.walk_packages(getattr(package, "__path__", []), package.__name__ + "."):
                yield _import(info.name)
        else:
            yield _import(path)


class JobRegistry(dict):
    """``{job name: Job class}`` of every job found in task_paths."""

    def __init__(self, paths: Iterable[str] = ()) -> None:
        super().__init__()
        for module in iter_modules(paths):
            self.add_module(module)

    def add_module(self, module: ModuleType) -> None:
        """Register the Job classes defined in a module or its submodules."""
        prefix = module.__name__
        for value in list(vars(module).values()):
            if (
                isinstance(value, type)
                and issubclass(value, Job)
                and not value.abstract
                and (value.__module__ == prefix or value.__module__.startswith(prefix + "."))
            ):
                self.add(value)

    def add(self, job: type[Job]) -> type[Job]:
        existing = self.get(job.name)
        if existing is not None and existing is not job:
            raise ImproperlyConfigured(
                f"two jobs are named {job.name!r}: {existing.__module__}.{existing.__qualname__} and "
                f"{job.__module__}.{job.__qualname__}; give one of them another name"
            )
        self[job.name] = job
        return job

    def job(self, name: str) -> type[Job]:
        """The job class of ``name`` or TaskNotAvailable."""
        try:
            return self[name]
        except KeyError:
            raise TaskNotAvailable(name, list(self)) from None

    def periodic(self) -> list[type[Job]]:
        return [job for job in self.values() if job.is_periodic()]
