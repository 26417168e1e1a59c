"""awx/*.yml, the controller as code, checked without a controller.

Every task that calls an awx.awx module has its arguments validated against that module's own
argument spec, taken from the awx.awx collection the venv's `ansible` package bundles: each
module builds its spec inside main() and hands it to ControllerAPIModule, so main() runs here
with that class replaced by one that raises with the spec it is given. The spec is then the
module's, plus the connection options ControllerModule adds (AUTH_ARGSPEC), plus the
mutually_exclusive/required_if rules, all read from the bundled files, never copied here.

The arguments are what Ansible would send: the play's module_defaults merged in, every
"{{ ... }}" rendered with awx/vars.yml (and a key file for the one lookup). The raw string
would not do: a module receives the rendered value, and "{{ x | bool }}" is no bool to the
validator. A template that needs a variable nobody defines is given a placeholder of the type
the spec asks for (its first choice when it has choices), so that such a value is accepted
where the type fits and still checked where the option does not exist.

Beyond the specs, what a controller would refuse or run wrongly: references to objects the
file does not define first, playbooks that are not in the project, survey specs that AWX's
API rejects, survey and extra variables that no playbook or role reads, workflow nodes made
before the nodes they point to, a workflow limit that would not reach a node, and the
schedule's rrule (RFC 5545). The tables at the end break copies of the tasks and expect
each check to say so.
"""

from __future__ import annotations

import copy
import datetime
import functools
import importlib
import re
import sys
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
AWX = ROOT / "awx"
COLLECTIONS = ROOT / ".collections"
sys.path.insert(0, str(COLLECTIONS))

from ansible.errors import AnsibleUndefinedVariable, AnsibleValueOmittedError  # noqa: E402
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator  # noqa: E402
from ansible.parsing.dataloader import DataLoader  # noqa: E402
from ansible.parsing.mod_args import ModuleArgsParser  # noqa: E402
from ansible.plugins.loader import init_plugin_loader, module_loader  # noqa: E402
from ansible.template import Templar, trust_as_template  # noqa: E402

try:  # AWX parses a schedule's rule with dateutil: so does this test, where the venv has it
    from dateutil.rrule import rrulestr
except ImportError:  # not in the project's venv: the RFC 5545 checks below stand alone
    rrulestr = None

# What a controller as code must make (the part 5).
REQUIRED_KINDS = {
    "organization",
    "execution_environment",
    "project",
    "credential",
    "inventory",
    "inventory_source",
    "job_template",
    "workflow_job_template",
    "workflow_job_template_node",
    "schedule",
    "notification_template",
}
# The job templates the workflow and docs/awx.md name.
REQUIRED_JOB_TEMPLATES = {"MV6 plan", "MV6 adopt one host", "MV6 verify", "MV6 teardown one host"}

# What AWX's API requires of a survey spec, and its question types
# (awx/api/views: _validate_spec_data; awx/main/models/mixins.py).
SURVEY_FIELDS = (
    ("name", str, "string"),
    ("description", str, "string"),
    ("spec", list, "list of items"),
)
SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}
# Where a variable counts as read: tasks, templates, playbooks and plugins, not the
# declarations (argument_specs.yml, defaults/) that only name it.
READ_DIRS = ("playbooks", "roles", "plugins")

PLACEHOLDER = {
    "str": "placeholder",
    "raw": "placeholder",
    "path": "/placeholder",
    "int": 1,
    "float": 1.0,
    "bool": True,
    "dict": {},
    "list": [],
    "jsonarg": "{}",
    "json": "{}",
}


@dataclass
class RawTask:
    """A task as written: where it is, its module and its arguments before templating."""

    where: str
    action: str
    args: dict
    variables: dict = field(default_factory=dict)


@dataclass
class Task:
    """A task as the module would receive it."""

    where: str
    action: str
    params: dict

    @property
    def kind(self) -> str:
        return self.action.rsplit(".", 1)[-1]


# --- Loading --------------------------------------------------------------------------------


@functools.cache
def _loader() -> DataLoader:
    init_plugin_loader([str(COLLECTIONS)])
    return DataLoader()


def _load(path: Path):
    # trusted_as_template: ansible-core 2.19 renders only templates it trusts, as it does
    # the playbooks and vars files it loads itself.
    return _loader().load_from_file(str(path), trusted_as_template=True)


INCLUDES = {f"ansible.builtin.{verb}_tasks" for verb in ("import", "include")}


def _task_list(tasks, base: Path, where: str):
    """(where, task) of every task, through blocks and the task files they include."""
    for i, task in enumerate(tasks or []):
        name = task.get("name", f"task {i}")
        for section in ("block", "rescue", "always"):
            if section in task:
                yield from _task_list(task[section], base, f"{where} / {name}")
        if "block" in task:
            continue
        action, args, _delegate = ModuleArgsParser(dict(task)).parse()
        if action in INCLUDES:
            included = base / (args.get("file") or args["_raw_params"])
            yield from _task_list(_load(included), included.parent, f"{where} / {included.name}")
        else:
            yield f"{where} / {name}", task


def play_files() -> list[Path]:
    """The playbooks of awx/ (a list of plays; vars.yml is a mapping)."""
    return [p for p in sorted(AWX.glob("*.yml")) if isinstance(_load(p), list)]


def raw_tasks(path: Path, extra_vars: dict | None = None) -> list[RawTask]:
    """Every awx.awx task of a playbook, with the play's module_defaults merged in."""
    out = []
    for play in _load(path):
        variables = {}
        for vars_file in play.get("vars_files", []):
            variables.update(_load(path.parent / vars_file))
        variables.update(play.get("vars", {}))
        variables.update(extra_vars or {})
        defaults = play.get("module_defaults", {})
        for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
            for where, task in _task_list(play.get(section), path.parent, path.name):
                action, args, _delegate = ModuleArgsParser(dict(task)).parse()
                if not action.startswith("awx.awx."):
                    assert action.split(".")[0] in ("ansible",), f"{where}: module {action}"
                    continue
                merged = {}
                if action.split(".")[-1] in _action_group():
                    merged.update(defaults.get("group/awx.awx.controller", {}))
                merged.update(defaults.get(action, {}))
                merged.update(args)
                out.append(RawTask(where, action, merged, {**variables, **task.get("vars", {})}))
    return out


@functools.cache
def _collection_root() -> Path:
    context = module_loader.find_plugin_with_context("awx.awx.job_template")
    assert context.resolved, "awx.awx is not installed (the ansible package bundles it)"
    return Path(context.plugin_resolved_path).parents[2]


@functools.cache
def _action_group() -> frozenset[str]:
    runtime = yaml.safe_load((_collection_root() / "meta" / "runtime.yml").read_text())
    return frozenset(runtime["action_groups"]["controller"])


# --- The modules' own argument specs --------------------------------------------------------


# What else main() gives the module class that ArgumentSpecValidator checks.
RULES = ("mutually_exclusive", "required_together", "required_one_of", "required_if", "required_by")


class _Captured(Exception):
    def __init__(self, spec: dict, rules: dict):
        super().__init__("argument spec captured")
        self.spec = spec
        self.rules = rules


@functools.cache
def module_spec(action: str) -> tuple[dict, dict]:
    """(argument_spec, rules) of an awx.awx module, as its main() builds them."""
    context = module_loader.find_plugin_with_context(action)
    assert context.resolved, f"{action}: no such module in the bundled awx.awx"
    ns, coll, name = context.resolved_fqcn.split(".")
    module = importlib.import_module(f"ansible_collections.{ns}.{coll}.plugins.modules.{name}")
    bases = {
        attr: getattr(module, attr)
        for attr in ("ControllerAPIModule", "ControllerAWXKitModule", "ControllerModule")
        if hasattr(module, attr)
    }
    assert bases, f"{action}: builds no Controller*Module; the spec cannot be taken"

    def capture(base):
        class Capture:
            def __init__(self, argument_spec=None, **kwargs):
                spec = dict(getattr(base, "AUTH_ARGSPEC", {}))
                spec.update(argument_spec or {})
                raise _Captured(spec, kwargs)

        return Capture

    try:
        for attr, base in bases.items():
            setattr(module, attr, capture(base))
        module.main()
    except _Captured as captured:
        rules = {k: v for k, v in captured.rules.items() if k in RULES}
        return captured.spec, rules
    finally:
        for attr, base in bases.items():
            setattr(module, attr, base)
    raise AssertionError(f"{action}: main() returned without building its module")


# --- Rendering ------------------------------------------------------------------------------


def _has_template(value) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_template(v) for v in value)
    return False


def _plain(value):
    """Tagged 2.19 values as plain Python, as a module gets them over JSON."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


_OMIT = object()


def _render(templar: Templar, value, option: dict | None):
    """The value Ansible would pass; a typed placeholder for a template whose variable no
    one defines; _OMIT for an omitted one. Any other template error is the test's failure."""
    if not _has_template(value):
        return _plain(value)
    try:
        return _plain(templar.template(value))
    except AnsibleValueOmittedError:
        return _OMIT
    except AnsibleUndefinedVariable:
        if isinstance(value, dict):
            rendered = {k: _render(templar, v, None) for k, v in value.items()}
            return {k: v for k, v in rendered.items() if v is not _OMIT}
        if isinstance(value, list):
            return [v for v in (_render(templar, v, None) for v in value) if v is not _OMIT]
        if option and option.get("choices"):
            return option["choices"][0]
        return copy.deepcopy(PLACEHOLDER[(option or {}).get("type", "str")])


def render(raw: RawTask) -> Task:
    spec, _doc = module_spec(raw.action)
    templar = Templar(loader=_loader(), variables=raw.variables)
    params = {}
    for key, value in raw.args.items():
        rendered = _render(templar, value, _option(spec, key))
        if rendered is not _OMIT:
            params[key] = rendered
    return Task(raw.where, raw.action, params)


def _option(spec: dict, key: str) -> dict | None:
    for name, option in spec.items():
        if key == name or key in option.get("aliases", []):
            return option
    return None


# --- Checks: each returns the problems it finds, as sentences -------------------------------


def argument_errors(task: Task) -> list[str]:
    spec, rules = module_spec(task.action)
    result = ArgumentSpecValidator(spec, **rules).validate(copy.deepcopy(task.params))
    # The validator says only "NAME. Supported parameters include: ..." for an unknown option.
    return [
        f"{task.where}: {'unsupported parameter ' if _unsupported(e) else ''}{e.msg}"
        for e in result.errors.errors
    ]


def _unsupported(error) -> bool:
    return type(error).__name__ == "UnsupportedError"


def _named(tasks: list[Task], kind: str) -> dict[str, int]:
    """The names a kind of object gets, with the index of the first task making it."""
    out = {}
    for i, task in enumerate(tasks):
        if task.kind == kind and task.params.get("state", "present") != "absent":
            out.setdefault(task.params.get("name"), i)
    return out


# option -> the kind of object it names (a list option names several).
REFERENCES = {
    "organization": "organization",
    "lookup_organization": "organization",
    "default_environment": "execution_environment",
    "execution_environment": "execution_environment",
    "project": "project",
    "source_project": "project",
    "inventory": "inventory",
    "credentials": "credential",
    "credential": "credential",
    "credential_type": "credential_type",
    "notification_templates_error": "notification_template",
    "notification_templates_success": "notification_template",
    "notification_templates_started": "notification_template",
    "workflow_job_template": "workflow_job_template",
}
UNIFIED_JOB_TEMPLATE_KINDS = ("job_template", "workflow_job_template")
# What every controller has: named, not made.
BUILT_IN = {"credential_type": {"Machine", "Source Control", "Container Registry"}}


def reference_errors(tasks: list[Task]) -> list[str]:
    """Every object a task names is made by an earlier task of the file."""
    errors = []
    for i, task in enumerate(tasks):
        for option, kind in REFERENCES.items():
            if option not in task.params or option not in module_spec(task.action)[0]:
                continue
            names = task.params[option]
            for name in names if isinstance(names, list) else [names]:
                if name in BUILT_IN.get(kind, ()):
                    continue
                made = _named(tasks, kind).get(name)
                if made is None or made >= i:
                    errors.append(f"{task.where}: {option} {name!r} is no {kind} made before it")
        if task.kind in ("schedule", "workflow_job_template_node"):
            name = task.params.get("unified_job_template")
            made = [_named(tasks, kind).get(name) for kind in UNIFIED_JOB_TEMPLATE_KINDS]
            if not any(m is not None and m < i for m in made):
                errors.append(
                    f"{task.where}: unified_job_template {name!r} is no template made before it"
                )
    return errors


def node_errors(tasks: list[Task]) -> list[str]:
    """Workflow nodes point at nodes of their own workflow made before them (the module looks
    the identifiers up when it makes the node), and a workflow that asks for a limit only
    runs templates that ask for one too (AWX hands the limit only to those: another node
    would run on the whole inventory)."""
    errors = []
    made: dict[str, set[str]] = {}
    templates = {t.params["name"]: t.params for t in tasks if t.kind == "job_template"}
    workflows = {t.params["name"]: t.params for t in tasks if t.kind == "workflow_job_template"}
    for task in tasks:
        if task.kind != "workflow_job_template_node":
            continue
        workflow = task.params["workflow_job_template"]
        known = made.setdefault(workflow, set())
        for option in ("success_nodes", "failure_nodes", "always_nodes"):
            for identifier in task.params.get(option, []):
                if identifier not in known:
                    errors.append(
                        f"{task.where}: {option} {identifier!r} is no node of {workflow!r} "
                        "made before it"
                    )
        known.add(task.params["identifier"])
        template = templates.get(task.params.get("unified_job_template"), {})
        if workflows.get(workflow, {}).get("ask_limit_on_launch") and not template.get(
            "ask_limit_on_launch"
        ):
            errors.append(
                f"{task.where}: {workflow!r} asks for a limit, but "
                f"{task.params.get('unified_job_template')!r} does not: the limit would not "
                "reach it"
            )
    return errors


def playbook_errors(tasks: list[Task]) -> list[str]:
    """Each job template runs a playbook of the project (a list of plays)."""
    errors = []
    for task in tasks:
        if task.kind != "job_template":
            continue
        playbook = task.params.get("playbook", "")
        path = ROOT / playbook
        if not playbook or not path.is_file():
            errors.append(f"{task.where}: playbook {playbook!r} is not in the project")
            continue
        plays = _load(path)
        if not isinstance(plays, list) or not all(
            "hosts" in p or "import_playbook" in p or "ansible.builtin.import_playbook" in p
            for p in plays
        ):
            errors.append(f"{task.where}: {playbook} is not a playbook")
    return errors


def survey_spec_errors(where: str, survey: dict) -> list[str]:
    """What AWX's API refuses in a survey spec (awx/api/views: _validate_spec_data), in its
    words."""
    errors = []
    for key, kind, label in SURVEY_FIELDS:
        if key not in survey:
            errors.append(f"Field '{key}' is missing from survey spec.")
        elif not isinstance(survey[key], kind):
            errors.append(
                f"Expected {label} for field '{key}', received {type(survey[key]).__name__} type."
            )
    questions = survey.get("spec") if isinstance(survey.get("spec"), list) else []
    if "spec" in survey and not questions:
        errors.append("'spec' doesn't contain any items.")
    seen = set()
    for idx, question in enumerate(questions):
        if not isinstance(question, dict):
            errors.append(f"Survey question {idx} is not a json object.")
            continue
        for key in ("type", "question_name", "variable", "required"):
            if key not in question:
                errors.append(f"'{key}' missing from survey question {idx}.")
        if question.get("variable") in seen:
            errors.append(
                f"'variable' '{question['variable']}' duplicated in survey question {idx}."
            )
        seen.add(question.get("variable"))
        if question.get("type") not in SURVEY_TYPES:
            errors.append(
                f"Survey question {idx}: type {question.get('type')!r} is not one of AWX's"
            )
        if question.get("type") in ("multiplechoice", "multiselect"):
            choices = question.get("choices")
            if isinstance(choices, str):
                choices = choices.split("\n")
            if not choices:
                errors.append(f"Survey question {idx}: a {question['type']} needs choices")
            elif "default" in question and question["default"] not in ("", *choices):
                errors.append(
                    f"Survey question {idx}: default {question['default']!r} is not a choice"
                )
    return [f"{where}: {e}" for e in errors]


@functools.cache
def _read_text() -> str:
    """Everything that can read a variable: playbooks, role tasks/templates/vars, plugins."""
    parts = []
    for top in READ_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT).parts
            if not path.is_file() or path.suffix not in (".yml", ".yaml", ".j2", ".py"):
                continue
            if "defaults" in rel or path.name == "argument_specs.yml" or "__pycache__" in rel:
                continue
            parts.append(path.read_text(errors="replace"))
    return "\n".join(parts)


def is_read(variable: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(variable)}(?!\w)", _read_text()) is not None


def survey_errors(tasks: list[Task]) -> list[str]:
    """Surveys AWX accepts, that are on, whose variables something reads; optional questions
    without a default (AWX sends a default whenever the question is left alone, which would
    override the inventory); required questions with a default where a workflow node or a
    schedule launches the template, since nobody is there to answer."""
    errors = []
    unattended = {
        t.params.get("unified_job_template")
        for t in tasks
        if t.kind in ("workflow_job_template_node", "schedule")
    }
    for task in tasks:
        if task.kind not in ("job_template", "workflow_job_template"):
            continue
        survey = task.params.get("survey_spec")
        for variable in task.params.get("extra_vars", {}):
            if not is_read(variable):
                errors.append(f"{task.where}: extra variable {variable} is read by nothing")
        if not survey:
            continue
        if not task.params.get("survey_enabled"):
            errors.append(f"{task.where}: survey_spec without survey_enabled: true is ignored")
        errors += survey_spec_errors(task.where, survey)
        for question in survey.get("spec", []):
            variable = question.get("variable", "")
            if not is_read(variable):
                errors.append(f"{task.where}: survey variable {variable} is read by nothing")
            has_default = question.get("default") not in (None, "")
            if not question.get("required") and has_default:
                errors.append(
                    f"{task.where}: optional survey variable {variable} has a default, which "
                    "AWX always sends"
                )
            if question.get("required") and not has_default and task.params["name"] in unattended:
                errors.append(
                    f"{task.where}: {variable} is required without a default, but "
                    f"{task.params['name']!r} is launched unattended"
                )
    return errors


RRULE_KEYS = {
    "FREQ",
    "UNTIL",
    "COUNT",
    "INTERVAL",
    "BYSECOND",
    "BYMINUTE",
    "BYHOUR",
    "BYDAY",
    "BYMONTHDAY",
    "BYYEARDAY",
    "BYWEEKNO",
    "BYMONTH",
    "BYSETPOS",
    "WKST",
}
RRULE_FREQS = {"SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY"}
RRULE_RE = re.compile(
    r"^DTSTART(?:;TZID=(?P<tz>[A-Za-z0-9_+\-/]+))?:(?P<start>\d{8}T\d{6})(?P<utc>Z?) "
    r"RRULE:(?P<rule>\S+)$"
)


def rrule_errors(rrule: str) -> list[str]:
    """One DTSTART and one RRULE (RFC 5545), with what AWX adds, in its words
    (awx/api/serializers.py, SchedulePreviewSerializer.validate_rrule): a DTSTART with a time
    zone, an INTERVAL, no SECONDLY, no numbered BYDAY, COUNT up to 999 and not with UNTIL."""
    match = RRULE_RE.match(rrule or "")
    if not match:
        return [f"rrule {rrule!r} is not 'DTSTART[;TZID=zone]:YYYYMMDDTHHMMSS[Z] RRULE:...'"]
    errors = []
    try:
        datetime.datetime.strptime(match["start"], "%Y%m%dT%H%M%S")
    except ValueError:
        errors.append(f"DTSTART {match['start']} is no date and time")
    if match["tz"] and match["utc"]:
        errors.append("DTSTART has both a TZID and Z")
    if not match["tz"] and not match["utc"]:
        errors.append("DTSTART cannot be a naive datetime.")
    if match["tz"]:
        try:
            zoneinfo.ZoneInfo(match["tz"])
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            errors.append("A valid TZID must be provided (e.g., America/New_York)")
    parts = [p.split("=", 1) for p in match["rule"].split(";")]
    if any(len(p) != 2 or not p[1] for p in parts):
        return [*errors, f"RRULE {match['rule']} is not KEY=VALUE;KEY=VALUE"]
    keys = [p[0] for p in parts]
    rule = dict(parts)
    if len(set(keys)) != len(keys):
        errors.append("RRULE names a key twice")
    if set(keys) - RRULE_KEYS:
        errors.append(f"RRULE has unknown keys {sorted(set(keys) - RRULE_KEYS)}")
    if rule.get("FREQ") not in RRULE_FREQS:
        errors.append(f"invalid 'FREQ': {rule.get('FREQ')}")
    elif rule["FREQ"] == "SECONDLY":
        errors.append("SECONDLY is not supported.")
    if "INTERVAL" not in rule:
        errors.append("INTERVAL required in rrule.")
    elif not re.fullmatch(r"[1-9]\d*", rule["INTERVAL"]):
        errors.append(f"INTERVAL {rule['INTERVAL']} is not a positive number")
    if re.search(r"(^|,)[+-]?\d", rule.get("BYDAY", "")):
        errors.append("BYDAY with numeric prefix not supported.")
    if "COUNT" in rule and "UNTIL" in rule:
        errors.append("RRULE may not contain both COUNT and UNTIL")
    if "COUNT" in rule and not re.fullmatch(r"[1-9]\d*", rule["COUNT"]):
        errors.append(f"COUNT {rule['COUNT']} is not a positive number")
    elif int(rule.get("COUNT", 1)) > 999:
        errors.append("COUNT > 999 is unsupported.")
    if not errors and rrulestr is not None:
        try:
            rrulestr(rrule.replace(" ", "\n"))
        except (ValueError, TypeError) as e:
            errors.append(f"rrule parsing failed validation: {e}")
    return errors


# --- The tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    # The one lookup of the playbook reads the SSH key from a file on the admin's machine.
    path = tmp_path_factory.mktemp("awx") / "id_ed25519"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n")
    return path


@pytest.fixture(scope="module")
def raws(key_file) -> list[RawTask]:
    assert play_files(), "awx/ holds no playbook"
    out = []
    for path in play_files():
        out += raw_tasks(path, {"mv6_awx_machine_ssh_key_file": str(key_file)})
    return out


@pytest.fixture(scope="module")
def tasks(raws) -> list[Task]:
    return [render(raw) for raw in raws]


def test_awx_tasks_use_fully_qualified_bundled_modules(raws):
    kinds = {raw.action.split(".")[-1] for raw in raws}
    assert kinds >= REQUIRED_KINDS, f"missing: {sorted(REQUIRED_KINDS - kinds)}"
    for raw in raws:
        assert raw.action.count(".") == 2, f"{raw.where}: {raw.action} is not an FQCN"
        module_spec(raw.action)


def test_every_awx_task_matches_its_module_argument_spec(tasks):
    errors = [e for task in tasks for e in argument_errors(task)]
    assert not errors, "\n".join(errors)


def test_objects_are_made_before_they_are_named(tasks):
    errors = reference_errors(tasks) + node_errors(tasks)
    assert not errors, "\n".join(errors)


def test_job_templates_run_playbooks_of_the_project(tasks):
    names = {t.params["name"] for t in tasks if t.kind == "job_template"}
    assert names >= REQUIRED_JOB_TEMPLATES, sorted(REQUIRED_JOB_TEMPLATES - names)
    errors = playbook_errors(tasks)
    assert not errors, "\n".join(errors)


def test_surveys_are_valid_and_read(tasks):
    assert any(t.params.get("survey_spec") for t in tasks), "no survey at all"
    errors = survey_errors(tasks)
    assert not errors, "\n".join(errors)


def test_schedule_rrule_parses(tasks):
    schedules = [t for t in tasks if t.kind == "schedule"]
    assert schedules
    for task in schedules:
        assert not rrule_errors(task.params["rrule"]), rrule_errors(task.params["rrule"])


def test_inventory_sources_name_files_of_the_project(tasks):
    """Project sources; the plugin's one is a *mv6.yml file, or a directory holding one
    after the hosts file (ansible reads a directory's files in sorted order, and the plugin
    needs the keeper from the file before it)."""
    sources = [t for t in tasks if t.kind == "inventory_source"]
    for task in sources:
        path = task.params["source_path"]
        assert task.params["source"] == "scm", task.where
        assert not path.startswith("/") and ".." not in Path(path).parts, task.where
    plugin = [t for t in sources if _is_plugin_source(t.params["source_path"])]
    assert plugin, "no inventory source for the mv6.transition.plan plugin"
    missing = []
    for task in sources:
        path = ROOT / task.params["source_path"]
        if not path.exists():
            missing.append(task.params["source_path"])
        elif path.is_dir():
            names = sorted(p.name for p in path.iterdir() if p.is_file())
            configs = [n for n in names if n.endswith((".mv6.yml", ".mv6.yaml"))]
            assert configs, f"{task.where}: {path} holds no *.mv6.yml file"
            assert names[0] not in configs, f"{task.where}: {configs[0]} sorts before the hosts"
    if missing:
        # The defaults name the site's own inventory, which this tree may not carry.
        pytest.skip(f"not in this tree: {', '.join(missing)}")


def _is_plugin_source(path: str) -> bool:
    return path.endswith("/") or path.endswith((".mv6.yml", ".mv6.yaml"))


def test_the_workflow_is_plan_adopt_verify(tasks):
    nodes = {
        t.params["identifier"]: t.params
        for t in tasks
        if t.kind == "workflow_job_template_node"
        and t.params["workflow_job_template"] == "MV6 adopt"
    }
    assert nodes["plan"]["unified_job_template"] == "MV6 plan"
    assert nodes["plan"]["success_nodes"] == ["adopt"]
    assert nodes["adopt"]["unified_job_template"] == "MV6 adopt one host"
    assert nodes["adopt"]["success_nodes"] == ["verify"]
    assert nodes["adopt"]["failure_nodes"], "no failure path after the adoption"
    assert nodes["verify"]["unified_job_template"] == "MV6 verify"


# --- The checks can fail: broken copies of the tasks ----------------------------------------


def _task(raws, kind, name=None) -> RawTask:
    for raw in raws:
        if raw.action == f"awx.awx.{kind}" and name in (None, raw.args.get("name")):
            return copy.deepcopy(raw)
    raise AssertionError(f"no {kind} {name}")


# (id, module, object name, arguments set on a copy (None: removed), exact message after
# "where: "; a message ending in ": " is a prefix, the rest lists the spec's own values)
BAD_ARGUMENTS = [
    (
        "unknown option",
        "job_template",
        "MV6 verify",
        {"ask_limit_on_start": True},
        "unsupported parameter ask_limit_on_start. Supported parameters include: ",
    ),
    (
        "not a choice",
        "job_template",
        "MV6 verify",
        {"verbosity": 9},
        "value of verbosity must be one of: 0, 1, 2, 3, 4, 5, got: 9",
    ),
    (
        "not a bool",
        "job_template",
        "MV6 plan",
        {"ask_limit_on_launch": "{{ 'sometimes' }}"},
        "argument 'ask_limit_on_launch' is of type str and we were unable to convert to bool: "
        "The value 'sometimes' is not a valid boolean. Valid booleans include: ",
    ),
    (
        "a required option missing",
        "inventory",
        None,
        {"organization": None},
        "missing required arguments: organization",
    ),
    (
        "mutually exclusive",
        "credential",
        None,
        {"user": "admin"},
        "parameters are mutually exclusive: organization|user|team",
    ),
    (
        "required_if of the node",
        "workflow_job_template_node",
        None,
        {"unified_job_template": None, "success_nodes": None},
        "state is present but any of the following are missing: unified_job_template, "
        "approval_node, success_nodes, always_nodes, failure_nodes",
    ),
]


@pytest.mark.parametrize(
    ("kind", "name", "args", "message"),
    [c[1:] for c in BAD_ARGUMENTS],
    ids=[c[0] for c in BAD_ARGUMENTS],
)
def test_a_bad_argument_is_caught(raws, kind, name, args, message):
    raw = _task(raws, kind, name)
    assert argument_errors(render(raw)) == []
    for key, value in args.items():
        if value is None:
            raw.args.pop(key, None)
        else:
            # Trusted, as the playbook's own strings are: an untrusted template stays as it is.
            raw.args[key] = trust_as_template(value) if isinstance(value, str) else value
    task = render(raw)
    errors = argument_errors(task)
    assert len(errors) == 1, errors
    if message.endswith(": "):
        assert errors[0].startswith(f"{task.where}: {message}"), errors[0]
    else:
        assert errors[0] == f"{task.where}: {message}"


def test_a_template_of_the_right_type_is_accepted(raws):
    # Undefined: the placeholder stands in, of the spec's type (int), and passes.
    raw = _task(raws, "job_template", "MV6 verify")
    raw.args["forks"] = trust_as_template("{{ mv6_awx_undefined_forks }}")
    task = render(raw)
    assert task.params["forks"] == 1
    assert argument_errors(task) == []
    # Defined: the rendered value is what is checked.
    raw = _task(raws, "job_template", "MV6 verify")
    raw.args["forks"] = trust_as_template("{{ mv6_awx_forks }}")
    raw.variables["mv6_awx_forks"] = "many"
    errors = argument_errors(render(raw))
    assert len(errors) == 1 and "argument 'forks' is of type str" in errors[0], errors


def _replace(tasks, where_part, **params) -> list[Task]:
    out = copy.deepcopy(tasks)
    hits = [t for t in out if where_part in t.where]
    assert len(hits) == 1, (where_part, [t.where for t in hits])
    hits[0].params.update(params)
    return out


# (id, task whose name contains, parameters set on a copy, the check, a sentence it must say)
BAD_FILES = [
    (
        "unknown template in a node",
        "adopt the host",
        {"unified_job_template": "MV6 adopt all hosts"},
        reference_errors,
        "unified_job_template 'MV6 adopt all hosts' is no template made before it",
    ),
    (
        "node pointing at a node made later",
        "verify after the adoption",
        {"success_nodes": ["plan"]},
        node_errors,
        "success_nodes 'plan' is no node of 'MV6 adopt' made before it",
    ),
    (
        "workflow limit that misses a node",
        "Job template: MV6 adopt one host",
        {"ask_limit_on_launch": False},
        node_errors,
        "'MV6 adopt' asks for a limit, but 'MV6 adopt one host' does not: the limit would not "
        "reach it",
    ),
    (
        "inventory not made",
        "Job template: MV6 plan",
        {"inventory": "Demo Inventory"},
        reference_errors,
        "inventory 'Demo Inventory' is no inventory made before it",
    ),
    (
        "playbook not in the project",
        "Job template: MV6 plan",
        {"playbook": "playbooks/adopt.yml"},
        playbook_errors,
        "playbook 'playbooks/adopt.yml' is not in the project",
    ),
    (
        "extra variable read by nothing",
        "MV6 move plan to keeper",
        {"extra_vars": {"mv6_plan_direction": "to_keeper"}},
        survey_errors,
        "extra variable mv6_plan_direction is read by nothing",
    ),
]


@pytest.mark.parametrize(
    ("where_part", "params", "check", "message"),
    [c[1:] for c in BAD_FILES],
    ids=[c[0] for c in BAD_FILES],
)
def test_a_bad_reference_is_caught(tasks, where_part, params, check, message):
    assert not check(tasks)
    broken = check(_replace(tasks, where_part, **params))
    assert len(broken) == 1 and broken[0].endswith(message), broken


def _survey_task(tasks, name) -> Task:
    return copy.deepcopy(next(t for t in tasks if t.params.get("name") == name))


# (id, change to the first question of a copy, a sentence the check must say)
BAD_SURVEYS = [
    (
        "variable read by nothing",
        {"variable": "mv6_adopt_host"},
        "survey variable mv6_adopt_host is read by nothing",
    ),
    (
        "optional with a default",
        {"default": "running"},
        "optional survey variable mv6_guest_default_state has a default, which AWX always sends",
    ),
    ("no required key", {"required": None}, "'required' missing from survey question 0."),
    ("unknown type", {"type": "dropdown"}, "type 'dropdown' is not one of AWX's"),
    (
        "default not a choice",
        {"default": "paused", "required": True},
        "default 'paused' is not a choice",
    ),
]


@pytest.mark.parametrize(
    ("change", "message"), [c[1:] for c in BAD_SURVEYS], ids=[c[0] for c in BAD_SURVEYS]
)
def test_a_bad_survey_is_caught(tasks, change, message):
    task = _survey_task(tasks, "MV6 adopt one host")
    question = task.params["survey_spec"]["spec"][0]
    for key, value in change.items():
        if value is None:
            question.pop(key)
        else:
            question[key] = value
    errors = survey_errors([*tasks, task])
    assert any(e.endswith(message) for e in errors), errors


def test_a_required_question_without_default_is_refused_where_nobody_answers(tasks):
    teardown = next(t for t in tasks if t.params.get("name") == "MV6 teardown one host")
    schedule = copy.deepcopy(next(t for t in tasks if t.kind == "schedule"))
    schedule.params["unified_job_template"] = "MV6 teardown one host"
    errors = survey_errors([teardown, schedule])
    assert errors == [
        f"{teardown.where}: mv6_teardown_purge_disks is required without a default, but "
        "'MV6 teardown one host' is launched unattended"
    ]


@pytest.mark.parametrize(
    ("rrule", "message"),
    [
        (
            "RRULE:FREQ=DAILY;INTERVAL=1",
            "is not 'DTSTART[;TZID=zone]:YYYYMMDDTHHMMSS[Z] RRULE:...'",
        ),
        ("DTSTART:20250101T050000 RRULE:FREQ=DAILY;INTERVAL=1", "DTSTART cannot be a naive"),
        ("DTSTART:20250101T050000Z RRULE:FREQ=DAILY", "INTERVAL required in rrule."),
        ("DTSTART:20250101T050000Z RRULE:FREQ=SECONDLY;INTERVAL=1", "SECONDLY is not supported."),
        ("DTSTART:20250101T050000Z RRULE:FREQ=NIGHTLY;INTERVAL=1", "invalid 'FREQ': NIGHTLY"),
        (
            "DTSTART;TZID=Mars/Olympus:20250101T050000 RRULE:FREQ=DAILY;INTERVAL=1",
            "A valid TZID must be provided",
        ),
        ("DTSTART:20251301T050000Z RRULE:FREQ=DAILY;INTERVAL=1", "DTSTART 20251301T050000 is no"),
        ("DTSTART:20250101T050000Z RRULE:FREQ=DAILY;INTERVAL=0", "INTERVAL 0 is not a positive"),
        (
            "DTSTART:20250101T050000Z RRULE:FREQ=DAILY;INTERVAL=1;COUNT=5;UNTIL=20260101T000000Z",
            "RRULE may not contain both COUNT and UNTIL",
        ),
        ("DTSTART:20250101T050000Z RRULE:FREQ=DAILY;INTERVAL=1;COUNT=1000", "COUNT > 999"),
        ("DTSTART:20250101T050000Z RRULE:FREQ=MONTHLY;INTERVAL=1;BYDAY=1MO", "BYDAY with numeric"),
        ("DTSTART:20250101T050000Z RRULE:FREQ=DAILY;INTERVAL=1;EVERY=1", "unknown keys ['EVERY']"),
    ],
)
def test_a_bad_rrule_is_caught(rrule, message):
    errors = rrule_errors(rrule)
    assert len(errors) == 1 and message in errors[0], errors


def test_a_good_rrule_passes():
    for rrule in (
        "DTSTART;TZID=Europe/Paris:20250101T050000 RRULE:FREQ=DAILY;INTERVAL=1",
        "DTSTART:20250101T050000Z RRULE:FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,TH;COUNT=10",
    ):
        assert rrule_errors(rrule) == [], rrule
