"""AWX as the tests see it, without a controller: the objects awx/apply.yml would send, checked against the real
awx.awx modules' argument specs; AWX's own survey rules (ported from awx/api/views and awx/main/models/mixins.py of
AWX 24); which role argument specs a playbook reaches; and a job's private data dir built the way AWX builds it
(inventory script, extra vars file with !unsafe values, credential injection), for ansible-runner.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import jinja2
import jinja2.sandbox
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AWX_MODULES = "ansible_collections.awx.awx.plugins.modules"
SURVEY_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str,), "textarea": (str,), "password": (str,), "multiplechoice": (str,), "multiselect": (str,),
    "integer": (int,), "float": (float, int),
}


# --- the objects -------------------------------------------------------------------------------------------------

def render_objects(folder: Path, *extra: str) -> dict[str, list[dict[str, Any]]]:
    """awx/apply.yml's objects exactly as it would send them (its render mode: no controller is contacted)."""
    out = folder / "awx_objects.json"
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "awx/apply.yml", "-e", f"vdp_awx_render_to={out}",
         "-e", "vdp_awx_scm_url=https://git.example.internal/platform/virtue-migration.git",
         "-e", "vdp_awx_ee_image=registry.example.internal/virtue/migration-ee:1", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False, env=ansible_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    env.update(extra or {})
    return env


class _Captured(Exception):
    pass


def module_argument_spec(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The real awx.awx module's argument_spec (built inside its main()) and its other AnsibleModule arguments."""
    module = importlib.import_module(f"{AWX_MODULES}.{name}")
    captured: dict[str, Any] = {}

    def capture(argument_spec: dict[str, Any], **kwargs: Any) -> None:
        captured.update(spec=argument_spec, kwargs=kwargs)
        raise _Captured

    with mock.patch.object(module, "ControllerAPIModule", side_effect=capture):
        try:
            module.main()
        except _Captured:
            pass
    auth = importlib.import_module("ansible_collections.awx.awx.plugins.module_utils.controller_api")
    spec = dict(auth.ControllerModule.AUTH_ARGSPEC, **captured["spec"])
    return spec, captured["kwargs"]


def validation_errors(module: str, params: dict[str, Any]) -> list[str]:
    """What the module's own argument validation says of these parameters (unknown keys, types, choices)."""
    spec, kwargs = module_argument_spec(module)
    validator = ArgumentSpecValidator(
        spec,
        mutually_exclusive=kwargs.get("mutually_exclusive"),
        required_together=kwargs.get("required_together"),
        required_one_of=kwargs.get("required_one_of"),
        required_if=kwargs.get("required_if"),
    )
    return [str(e) for e in validator.validate(params).errors]


def documented_suboptions(module: str, option: str) -> dict[str, Any]:
    """An option's suboptions from the module's DOCUMENTATION, as an argument spec (workflow_nodes has no other)."""
    doc = yaml.safe_load(importlib.import_module(f"{AWX_MODULES}.{module}").DOCUMENTATION)
    return _doc_to_spec(doc["options"][option]["suboptions"])


def _doc_to_spec(options: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for name, doc in options.items():
        entry = {k: doc[k] for k in ("type", "elements", "choices", "required", "aliases") if k in doc}
        if "suboptions" in doc:
            entry["options"] = _doc_to_spec(doc["suboptions"])
        spec[name] = entry
    return spec


def nested_errors(spec: dict[str, Any], params: dict[str, Any]) -> list[str]:
    return [str(e) for e in ArgumentSpecValidator(spec).validate(params).errors]


# --- apply.yml's tasks ---------------------------------------------------------------------------------------------

def apply_tasks() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(awx.awx module, the __vdp_awx_objects key it loops over, its argument names) of every task of apply.yml."""
    play = load_yaml(ROOT / "awx" / "apply.yml")[0]
    for task in play["tasks"]:
        modules = [k for k in task if k.startswith("awx.awx.")]
        if not modules:
            continue
        loop = re.fullmatch(r"\{\{ __vdp_awx_objects\.(\w+) \}\}", str(task.get("loop", "")))
        yield modules[0].removeprefix("awx.awx."), loop.group(1) if loop else "", task[modules[0]]


class _UnsafeLoader(yaml.SafeLoader):
    """Ansible's YAML as data: `!unsafe` strings are plain strings."""


_UnsafeLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))  # type: ignore[arg-type]


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_UnsafeLoader)  # noqa: S506 - a SafeLoader subclass


# --- surveys (AWX's rules) -----------------------------------------------------------------------------------------

def survey_spec_errors(spec: dict[str, Any]) -> list[str]:
    """AWX's JobTemplateSurveySpec._validate_spec_data, as AWX 24 applies it when the survey is saved."""
    errors = [f"survey {key} missing or not {kind.__name__}" for key, kind in
              (("name", str), ("description", str), ("spec", list)) if not isinstance(spec.get(key), kind)]
    seen: set[str] = set()
    for idx, item in enumerate(spec.get("spec") or []):
        errors += [f"question {idx}: {e}" for e in _question_errors(item, seen)]
    return errors or ([] if spec.get("spec") else ["survey spec has no question"])


def _question_errors(item: dict[str, Any], seen: set[str]) -> list[str]:
    errors = [f"{key} missing or of the wrong type" for key, kind in
              (("type", str), ("question_name", str), ("variable", str), ("required", bool))
              if not isinstance(item.get(key), kind)]
    if errors:
        return errors
    if item["variable"] in seen:
        errors.append(f"variable {item['variable']} duplicated")
    seen.add(item["variable"])
    qtype = item["type"]
    if qtype not in SURVEY_TYPES:
        return [*errors, f"type {qtype} is not an AWX survey type"]
    if item.get("default", "") != "" and not isinstance(item["default"], SURVEY_TYPES[qtype]):
        errors.append(f"default {item['default']!r} is not a {qtype}")
    errors += [f"{key} is not an integer" for key in ("min", "max") if item.get(key) is not None
               and not isinstance(item[key], int)]
    if qtype in ("multiplechoice", "multiselect"):
        choices = item.get("choices")
        if not choices:
            errors.append("no choices")
        elif "default" in item and any(d not in choices for d in str(item["default"]).splitlines()):
            errors.append("default is not one of the choices")
    return errors


def answer_errors(question: dict[str, Any], answers: dict[str, Any]) -> list[str]:
    """AWX's _survey_element_validation: would AWX accept this launch's answer to the question?"""
    var, qtype = question["variable"], question["type"]
    if var not in answers:
        return [f"{var} missing"] if question["required"] else []
    value = answers[var]
    if qtype in ("text", "textarea", "password"):
        if not isinstance(value, str):
            return [f"{var} is not a string"]
        return [f"{var} length out of [{question.get('min')}, {question.get('max')}]"
                for bound, bad in (("min", lambda n: len(value) < n), ("max", lambda n: len(value) > n))
                if question.get(bound) not in ("", None) and bad(int(question[bound]))]
    if qtype in ("integer", "float"):
        if type(value) not in ((int,) if qtype == "integer" else (float, int)):
            return [f"{var} is not a {qtype}"]
        return [f"{var} out of [{question.get('min')}, {question.get('max')}]"
                for bound, bad in (("min", lambda n: value < n), ("max", lambda n: value > n))
                if question.get(bound) not in ("", None) and bad(float(question[bound]))]
    if qtype == "multiplechoice" and value not in question["choices"]:
        return [f"{var}={value!r} is not one of {question['choices']}"]
    return []


def launch_extra_vars(job_template: dict[str, Any], *, workflow_vars: dict[str, Any],
                      artifacts: dict[str, Any]) -> dict[str, Any]:
    """The extra vars of a job a workflow node spawns (AWX 24): the template's extra_vars, then its survey defaults,
    then the node's runtime vars - the ancestors' set_stats artifacts overridden by the workflow job's extra vars."""
    result = dict(job_template.get("extra_vars") or {})
    if job_template.get("survey_enabled"):
        for question in job_template["survey_spec"]["spec"]:
            if question.get("default") is not None:
                result[question["variable"]] = question["default"]
    return {**result, **artifacts, **workflow_vars}


# --- what a playbook reaches ---------------------------------------------------------------------------------------

def reachable_roles(playbook: Path) -> set[str]:
    """Roles a playbook imports or includes, directly or through other roles (static names only)."""
    roles: set[str] = set()
    pending = list(_role_names(load_yaml(playbook)))
    while pending:
        role = pending.pop()
        if role in roles:
            continue
        roles.add(role)
        for tasks in sorted((ROOT / "roles" / role / "tasks").glob("*.yml")):
            pending += list(_role_names(load_yaml(tasks)))
    return roles


def _role_names(node: Any) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from _role_names(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ("ansible.builtin.import_role", "ansible.builtin.include_role") and isinstance(value, dict):
                yield str(value["name"])
            elif key == "roles" and "hosts" in node and isinstance(value, list):
                yield from (str(r["role"] if isinstance(r, dict) else r) for r in value)
            else:
                yield from _role_names(value)


def role_options(role: str) -> dict[str, list[dict[str, Any]]]:
    """Every option a role's argument specs declare (over all entry points), by name."""
    specs = load_yaml(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]
    options: dict[str, list[dict[str, Any]]] = {}
    for entry in specs.values():
        for name, option in (entry.get("options") or {}).items():
            options.setdefault(name, []).append(option)
    return options


def role_defaults_feeding(role: str, variable: str) -> list[str]:
    """The role's defaults whose value is computed from `variable` (e.g. rollback_confirm from vdp_rollback_confirm)."""
    path = ROOT / "roles" / role / "defaults" / "main.yml"
    defaults = load_yaml(path) if path.exists() else {}
    pattern = re.compile(rf"\b{re.escape(variable)}\b")
    return [k for k, v in (defaults or {}).items() if pattern.search(json.dumps(v))]


def render_default(expression: str) -> Any:
    """A role default such as "{{ vdp_rollback_strategy | default('flags') }}" with nothing set (plain Jinja)."""
    return jinja2.Environment(autoescape=False).from_string(expression).render()  # noqa: S701 - not HTML


# --- a job as AWX runs it ------------------------------------------------------------------------------------------

def write_inventory_script(folder: Path, data: dict[str, Any]) -> Path:
    """inventory/hosts exactly as AWX's BaseTask.build_inventory writes it: an executable Python script."""
    path = folder / "inventory" / "hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#! /usr/bin/env python3\n# -*- coding: utf-8 -*-\nprint({json.dumps(data)!r})\n")
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IWUSR)
    return path


def write_extra_vars(folder: Path, extra_vars: dict[str, Any], safe: dict[str, Any]) -> Path:
    """env/extravars as AWX writes it: every value !unsafe (no Jinja) except the job template's own extra_vars."""
    def dump(value: Any, trusted: bool) -> str:
        if isinstance(value, str) and not trusted:
            return "!unsafe " + json.dumps(value)
        return json.dumps(value)

    lines = [f"{json.dumps(k)}: {dump(v, k in safe and safe[k] == v)}" for k, v in extra_vars.items()]
    path = folder / "env" / "extravars"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def inject_credential(credential_type: dict[str, Any], inputs: dict[str, str]) -> dict[str, str]:
    """The job environment a credential of this type gives (AWX renders the env injectors with Jinja; an input that
    is not set renders as "")."""
    env = credential_type["injectors"]["env"]
    sandbox = jinja2.sandbox.ImmutableSandboxedEnvironment()
    return {name: sandbox.from_string(template).render(**inputs) for name, template in env.items()}


def exported_inventory(path: str) -> dict[str, Any]:
    """An inventory as AWX's SCM inventory source imports it: ansible-inventory --list --export, values untemplated."""
    proc = subprocess.run([str(BIN / "ansible-inventory"), "-i", path, "--list", "--export"], cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=120, env=ansible_env())
    return json.loads(proc.stdout)
