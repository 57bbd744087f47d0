"""Every setting of pq, defined once.

A setting has a name, a CLI flag, a ``PQ_<NAME>`` environment variable, a
default, a check and a help line.  Values come from, highest first: the
command line, the environment, keyword arguments to ``PulsarQueue``, the
config module (``PulsarQueue(config=__file__)``), the default.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping, Sequence

from .exceptions import ImproperlyConfigured


def _int(minimum: int = 0) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        return number

    return check


def _float(minimum: float = 0.0, allow_none: bool = False) -> Callable[[Any], float | None]:
    def check(value: Any) -> float | None:
        if allow_none and value in (None, "", "none", "None"):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number of seconds, got {value!r}") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        return number

    return check


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _str_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Iterable):
        items = [str(item).strip() for item in value]
        return [item for item in items if item]
    raise ValueError(f"expected a list of names, got {value!r}")


def _url(allow_none: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in (None, ""):
            if allow_none:
                return None
            raise ValueError("a URL is required, for example sqlite:///pq.sqlite3 or redis://127.0.0.1:6379/7")
        text = str(value)
        if "://" not in text:
            raise ValueError(
                f"{text!r} is not a URL; use sqlite:///path, memory://, redis://host:port/db "
                "or amqp://user:password@host:port/vhost"
            )
        return text

    return check


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text

    return check


def _serializer(value: Any) -> str:
    text = str(value).strip()
    if text in ("json", "msgpack") or "." in text or ":" in text:
        return text
    raise ValueError(f"expected json, msgpack or a dotted path to a codec class, got {value!r}")


@dataclass(frozen=True)
class Setting:
    """One setting: where it comes from and how it is checked."""

    name: str
    default: Any
    check: Callable[[Any], Any]
    help: str
    short: str | None = None
    is_flag: bool = False  # a store_true switch on the command line
    section: str = "server"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "PQ_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    # server shape
    Setting("workers", 4, _int(0), "Number of consumer actors (processes) consuming tasks.", short="-w"),
    Setting("concurrent_tasks", 10, _int(1), "Maximum number of tasks one consumer runs at once."),
    Setting("task_queues", ["default"], _str_list,
            "Comma-separated queue names the consumers take tasks from; the first is the default queue."),
    Setting("task_paths", [], _str_list,
            "Comma-separated modules holding jobs; a trailing .* loads every submodule."),
    Setting("name", "pq", str, "Application name: prefixes node names and loggers."),
    Setting("schedule_periodic", False, _bool, "Run the scheduler for periodic and cron jobs.", is_flag=True),
    Setting("max_requests", 0, _int(0),
            "Tasks a consumer runs before it is replaced by a fresh process; 0 means never."),
    Setting("max_memory", 0, _int(0),
            "Resident memory in MiB past which the monitor replaces a consumer; 0 means no limit."),
    # stores
    Setting("data_store", "sqlite:///pq.sqlite3", _url(),
            "Data store for events, results, locks and counters (sqlite://, memory://, redis://)."),
    Setting("message_broker", None, _url(allow_none=True),
            "Broker holding the task queues (sqlite://, memory://, redis://, amqp://); defaults to data_store."),
    Setting("namespace", "pq", str,
            "Prefix of every key and queue in the broker, so several apps can share one server."),
    Setting("message_serializer", "json", _serializer,
            "Codec of task messages: json, msgpack or a dotted path to a codec class."),
    Setting("secret", None, lambda v: None if v in (None, "") else str(v),
            "When set, every message is signed with HMAC-SHA256 and unsigned messages are refused."),
    # task running
    Setting("task_pool_timeout", 2.0, _float(0.01),
            "Seconds a consumer blocks waiting for a task before checking its state again."),
    Setting("lease_timeout", 30.0, _float(1.0),
            "Seconds a taken task stays leased without renewal; after it the task returns to its queue."),
    Setting("result_ttl", 3600.0, _float(0.0),
            "Seconds a finished task and its result are kept in the data store."),
    Setting("default_task_timeout", None, _float(0.0, allow_none=True),
            "Timeout in seconds of tasks whose job sets none; empty for no timeout."),
    Setting("thread_workers", 10, _int(1), "Threads of each consumer's pool for THREAD_IO jobs."),
    Setting("cpu_workers", 2, _int(1), "Child processes of each consumer's pool for CPUBOUND jobs."),
    Setting("max_message_size", 1_048_576, _int(1024),
            "Largest encoded task in bytes; bigger ones are refused at queue() and dead-lettered if met."),
    Setting("enable_execute_python", False, _bool,
            "Enable the built-in execute.python job, which runs arbitrary code sent in a task.",
            is_flag=True),
    Setting("timezone", "UTC", str, "Timezone of cron expressions (an IANA name)."),
    Setting("scheduler_lease", 6.0, _float(0.5),
            "Seconds the active scheduler's lock lasts unrenewed; another server takes over after it."),
    # actors
    Setting("heartbeat", 1.0, _float(0.05), "Seconds between heartbeats of each actor to the arbiter.",
            section="actors"),
    Setting("heartbeat_timeout", 30.0, _float(0.1),
            "Seconds without a heartbeat after which the arbiter kills and replaces an actor.",
            section="actors"),
    Setting("graceful_timeout", 30.0, _float(0.0),
            "Seconds in-flight tasks may take to finish on SIGTERM before the server stops.",
            section="actors"),
    Setting("max_restarts", 10, _int(0),
            "Restarts of one actor within --restart-period after which the server stops.",
            section="actors"),
    Setting("restart_period", 60.0, _float(0.1),
            "Window in seconds of the restart budget (see --max-restarts).", section="actors"),
    Setting("control", None, lambda v: None if v in (None, "") else str(v),
            "Path of the arbiter's unix socket that tests and the pq command use to reach the actors; "
            "empty disables it.", section="actors"),
    Setting("dashboard", 0, _int(0), "Port of the monitor's dashboard; 0 disables it.", section="monitor"),
    Setting("dashboard_host", "127.0.0.1", str, "Address the dashboard binds to.", section="monitor"),
    Setting("log_level", "info", _choice("debug", "info", "warning", "error", "critical"),
            "Logging level.", section="logging"),
)

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def load_module(config: str | ModuleType | None) -> ModuleType | None:
    """The config module: a module, a dotted name or a file path (``__file__``)."""
    if config is None or isinstance(config, ModuleType):
        return config
    path = os.path.abspath(config) if config.endswith(".py") else None
    if path is None:
        try:
            return importlib.import_module(config)
        except ImportError as exc:
            raise ImproperlyConfigured(f"config module {config!r} cannot be imported: {exc}") from exc
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and os.path.abspath(module.__file__) == path:
            return module
    if not os.path.isfile(path):
        raise ImproperlyConfigured(f"config file {config!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_pq_config_{abs(hash(path))}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``manage.py`` and ``pq serve``: one flag per setting."""
    parser = argparse.ArgumentParser(
        prog=prog, description="pq task queue server", argument_default=argparse.SUPPRESS
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in SETTINGS:
        group = groups.get(setting.section)
        if group is None:
            group = groups[setting.section] = parser.add_argument_group(setting.section)
        names = [setting.flag] + ([setting.short] if setting.short else [])
        help_text = f"{setting.help} [env {setting.env}; default {setting.default!r}]"
        if setting.is_flag:
            group.add_argument(*names, dest=setting.name, action="store_true", help=help_text)
        else:
            group.add_argument(*names, dest=setting.name, metavar=setting.name.upper(), help=help_text)
    return parser


class Config:
    """Resolved settings, read as attributes: ``cfg.workers``."""

    def __init__(
        self,
        config: str | ModuleType | None = None,
        argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = [key for key in kwargs if key not in SETTINGS_BY_NAME]
        if unknown:
            raise ImproperlyConfigured(
                f"unknown setting(s) {', '.join(sorted(unknown))}; "
                f"known settings: {', '.join(SETTINGS_BY_NAME)}"
            )
        module = load_module(config)
        environ = os.environ if environ is None else environ
        cli = vars(build_parser().parse_args(list(argv))) if argv is not None else {}
        self.module = module
        self.sources: dict[str, str] = {}
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw, source = setting.default, "default"
            if module is not None and hasattr(module, setting.name):
                raw, source = getattr(module, setting.name), "config module"
            if setting.name in kwargs:
                raw, source = kwargs[setting.name], "keyword argument"
            if setting.env in environ:
                raw, source = environ[setting.env], f"environment variable {setting.env}"
            if setting.name in cli:
                raw, source = cli[setting.name], f"command line {setting.flag}"
            if source == "default":
                values[setting.name] = raw
            else:
                try:
                    values[setting.name] = setting.check(raw)
                except ValueError as exc:
                    raise ImproperlyConfigured(
                        f"bad value for setting {setting.name!r} (from {source}): {exc}"
                    ) from None
            self.sources[setting.name] = source
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"no setting named {name!r}") from None

    def set(self, name: str, value: Any) -> None:
        """Change one setting at run time, checked as at start."""
        setting = SETTINGS_BY_NAME.get(name)
        if setting is None:
            raise ImproperlyConfigured(f"unknown setting {name!r}")
        self._values[name] = setting.check(value)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @property
    def broker_url(self) -> str:
        return self.message_broker or self.data_store

    @property
    def default_queue(self) -> str:
        return self.task_queues[0] if self.task_queues else "default"
