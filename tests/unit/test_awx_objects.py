"""AWX as code, checked without a controller (none can run here):

- every object awx/apply.yml would send passes the real awx.awx module's argument validation (a misspelled or
  mistyped field fails), and apply.yml's tasks pass every field of the data on;
- the surveys are valid for AWX, ask only variables a role argument spec reachable from the template's playbook
  declares (same type, the same choices), with the runbook's own defaults;
- nothing prompts: no vars_prompt or unbounded pause, no launch prompt without a default, a bounded approval;
- the references between the objects hold, and the workflow has the graph the runbook needs;
- the credential injects what the inventories read, and the inventories build the app's release from the survey;
- execution-environment.yml's build context (ansible-builder create) carries the pinned Python packages, the
  PostgreSQL client of the target's major and the collections.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import awx
from tests.support.awx import ROOT, load_yaml
from tests.support.code import module_utils

names: Any = module_utils("vdp_names")
PLAYBOOKS = [ROOT / "migrate.yml", *sorted((ROOT / "playbooks").glob("*.yml")), ROOT / "awx" / "rolled_back.yml"]


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return awx.render_objects(tmp_path_factory.mktemp("awx"))


def job_templates(objects: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {jt["name"]: jt for jt in objects["job_template"]}


def workflow(objects: dict[str, Any]) -> dict[str, Any]:
    (wf,) = objects["workflow_job_template"]
    return wf


# --- the objects against the real modules ----------------------------------------------------------------------

def test_every_object_passes_the_awx_modules_own_argument_validation(objects: dict[str, Any]) -> None:
    errors = [f"{kind} {obj.get('name')}: {e}" for kind, items in objects.items() for obj in items
              for e in awx.validation_errors(kind, obj)]
    assert not errors, "\n".join(errors)
    assert sum(len(v) for v in objects.values()) >= 20


def test_a_misspelled_or_mistyped_field_is_caught() -> None:
    """The check above can fail: the module validation it relies on rejects what AWX would not understand."""
    assert any("playbok" in e for e in awx.validation_errors("job_template", {"name": "x", "playbok": "a.yml"}))
    assert awx.validation_errors("job_template", {"name": "x", "verbosity": 9})
    assert awx.validation_errors("workflow_job_template", {"name": "x", "survey_enabled": "maybe"})


def test_every_workflow_node_matches_the_modules_documented_node_options(objects: dict[str, Any]) -> None:
    spec = awx.documented_suboptions("workflow_job_template", "workflow_nodes")
    errors = [f"{node['identifier']}: {e}" for node in workflow(objects)["workflow_nodes"]
              for e in awx.nested_errors(spec, node)]
    assert not errors, "\n".join(errors)
    assert awx.nested_errors(spec, {"identifier": "x", "unified_job_template": {"nmae": "typo"}})


def test_apply_passes_every_field_of_the_data_to_its_module(objects: dict[str, Any]) -> None:
    applied = set()
    for module, key, args in awx.apply_tasks():
        assert key == module, f"the awx.awx.{module} task must loop over __vdp_awx_objects.{module}"
        spec, _ = awx.module_argument_spec(module)
        known = set(spec) | {alias for option in spec.values() for alias in option.get("aliases", [])}
        assert set(args) <= known, f"awx.awx.{module} has no option {sorted(set(args) - known)}"
        for obj in objects[module]:
            assert set(obj) <= set(args), f"{module} {obj['name']}: apply.yml drops {sorted(set(obj) - set(args))}"
        applied.add(module)
    assert applied == set(objects), f"objects nobody applies: {sorted(set(objects) - applied)}"


# --- surveys ----------------------------------------------------------------------------------------------------

def surveys(objects: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [(jt["name"], jt["survey_spec"]) for jt in objects["job_template"] if jt.get("survey_enabled")]
    return [*found, (workflow(objects)["name"], workflow(objects)["survey_spec"])]


def test_surveys_are_valid_for_awx_and_their_defaults_are_accepted_answers(objects: dict[str, Any]) -> None:
    for name, spec in surveys(objects):
        assert not awx.survey_spec_errors(spec), (name, awx.survey_spec_errors(spec))
        defaults = {q["variable"]: q["default"] for q in spec["spec"] if "default" in q}
        for question in spec["spec"]:
            assert not awx.answer_errors(question, defaults) or (question["required"] and "default" not in question)
    assert awx.survey_spec_errors({"name": "x", "description": "", "spec": [
        {"type": "multiplechoice", "question_name": "q", "variable": "v", "required": True, "choices": ["a"],
         "default": "b"}]})


def declarations(playbook: str, variable: str) -> list[dict[str, Any]]:
    """The argument-spec options that accept `variable` in a playbook: declared as an option by a role the playbook
    reaches, or feeding the default of one (vdp_rollback_confirm -> rollback_confirm)."""
    found: list[dict[str, Any]] = []
    for role in awx.reachable_roles(ROOT / playbook):
        options = awx.role_options(role)
        found += options.get(variable, [])
        for fed in awx.role_defaults_feeding(role, variable):
            found += options.get(fed, [])
    return found


def inventory_feeds(variable: str) -> list[str]:
    """Top-level inventory keys (inventories/prod) whose value is built from `variable` (vdp_app from vdp_app_release)."""
    group_vars = load_yaml(ROOT / "inventories" / "prod" / "group_vars" / "all" / "main.yml")
    return [k for k, v in group_vars.items() if re.search(rf"\b{variable}\b", yaml.safe_dump(v))]


def compatible(question: dict[str, Any], option: dict[str, Any]) -> str:
    kind = option.get("type", "str")
    if question["type"] in ("text", "textarea", "password", "multiplechoice"):
        ok = kind in ("str", "raw")
    elif question["type"] == "integer":
        ok = kind in ("int", "float", "raw")
    else:
        ok = kind in ("float", "raw")
    if question["type"] == "multiplechoice" and sorted(question["choices"]) != sorted(option.get("choices") or []):
        return f"choices {question['choices']} are not the spec's {option.get('choices')}"
    return "" if ok else f"a {question['type']} answer for a {kind} option"


def accepted(playbook: str, question: dict[str, Any]) -> list[str]:
    """Why `playbook` does not accept the question's variable ([] = accepted)."""
    variable = question["variable"]
    found = declarations(playbook, variable)
    if not found:
        fed = [k for k in inventory_feeds(variable) if declarations(playbook, k) or any(
            awx.role_defaults_feeding(r, k) for r in awx.reachable_roles(ROOT / playbook))]
        return [] if fed else [f"{playbook} declares no {variable}"]
    return [f"{playbook}: {variable}: {p}" for p in map(lambda o: compatible(question, o), found) if p]


def test_every_job_template_survey_variable_is_declared_by_its_playbook(objects: dict[str, Any]) -> None:
    problems = [p for jt in objects["job_template"] if jt.get("survey_enabled")
                for q in jt["survey_spec"]["spec"] for p in accepted(jt["playbook"], q)]
    assert not problems, "\n".join(problems)


def test_every_workflow_survey_variable_reaches_a_node_that_declares_it(objects: dict[str, Any]) -> None:
    """The workflow's answers go to every node; each must be used by one and fit wherever it is declared."""
    jts = job_templates(objects)
    playbooks = [jts[n["unified_job_template"]["name"]]["playbook"] for n in workflow(objects)["workflow_nodes"]
                 if n["unified_job_template"]["type"] == "job_template"]
    for question in workflow(objects)["survey_spec"]["spec"]:
        verdicts = {pb: accepted(pb, question) for pb in playbooks if (ROOT / pb).exists()}
        users = [pb for pb, problems in verdicts.items() if not problems]
        assert users, f"no workflow node uses {question['variable']}: {verdicts}"
        clashes = [p for problems in verdicts.values() for p in problems if "declares no" not in p]
        assert not clashes, clashes


def test_a_survey_variable_no_role_declares_is_caught() -> None:
    assert accepted("playbooks/preflight.yml", {"variable": "vdp_bach_size", "type": "integer"})
    assert accepted("playbooks/preflight.yml", {"variable": "vdp_capacity_policy", "type": "multiplechoice",
                                                "choices": ["raise", "fail"]})


def test_survey_defaults_are_the_runbooks_own(objects: dict[str, Any]) -> None:
    """A default stated twice drifts: each one is checked against the place the runbook states it."""
    budgets = load_yaml(ROOT / "roles" / "run_context" / "defaults" / "main.yml")["run_context_budgets"]
    monitor = awx.role_options("monitor")["monitor_period_seconds"][0]
    rollback = load_yaml(ROOT / "roles" / "rollback" / "defaults" / "main.yml")
    expected = {
        "vdp_batch_size": names.BATCH_SIZE,
        "vdp_capacity_policy": names.CAPACITY_POLICY,
        "rehearsal_window_budget_minutes": next(b["minutes"] for b in budgets if b["id"] == "maintenance_window"),
        "monitor_period_seconds": monitor["default"],
        "rollback_strategy": awx.render_default(rollback["rollback_strategy"]),
    }
    for name, spec in surveys(objects):
        for question in spec["spec"]:
            if question["variable"] in expected:
                assert question["default"] == expected[question["variable"]], (name, question["variable"])
            else:
                assert "default" not in question, f"{name}: {question['variable']} states a default of its own"


# --- nothing prompts --------------------------------------------------------------------------------------------

def yaml_files() -> list[Path]:
    skip = (".venv", ".sandbox", "artifacts", "collections/ansible_collections", ".molecule")
    return [p for p in ROOT.rglob("*.yml") if not any(part in str(p.relative_to(ROOT)) for part in skip)]


def test_no_playbook_prompts_or_pauses_without_end() -> None:
    offenders = []
    for path in yaml_files():
        text = path.read_text()
        if re.search(r"^\s*-?\s*vars_prompt:", text, re.M):
            offenders.append(f"{path}: vars_prompt")
        for match in re.finditer(r"ansible\.builtin\.pause:(.*?)(?=\n\s*-\s|\Z)", text, re.S):
            if not re.search(r"\b(seconds|minutes):", match.group(1)):
                offenders.append(f"{path}: pause without seconds/minutes")
    assert not offenders, offenders


def test_launch_prompts_never_block_a_scheduled_run(objects: dict[str, Any]) -> None:
    """A prompt with a default (extra vars, pre-filled) does not block; one without does, unless documented: only
    required survey questions without a default, each named in awx/README.md's "Required at launch"."""
    readme = (ROOT / "awx" / "README.md").read_text()
    required_section = readme.split("Required at launch", 1)[1].split("\n#", 1)[0]
    for obj in [*objects["job_template"], *objects["workflow_job_template"]]:
        prompts = [k for k, v in obj.items() if k.startswith("ask_") and v]
        assert prompts in ([], ["ask_variables_on_launch"]), (obj["name"], prompts)
        for question in (obj.get("survey_spec") or {}).get("spec", []) if obj.get("survey_enabled") else []:
            if question["required"] and "default" not in question:
                assert f"`{question['variable']}`" in required_section, (obj["name"], question["variable"])
            if not question["required"] and "default" not in question:
                # AWX 24 sends a blank optional text as ""/null: only a variable whose users treat that as unset.
                assert question["variable"] == "vdp_rollback_confirm", (obj["name"], question["variable"])


def test_the_approval_is_bounded(objects: dict[str, Any]) -> None:
    (approval,) = [n for n in workflow(objects)["workflow_nodes"]
                   if n["unified_job_template"]["type"] == "workflow_approval"]
    timeout = approval["unified_job_template"]["timeout"]
    assert 0 < timeout <= 24 * 3600
    assert f"{timeout // 3600} hours" in approval["unified_job_template"]["description"]


# --- references and the graph -----------------------------------------------------------------------------------

def test_objects_refer_to_objects_that_exist(objects: dict[str, Any]) -> None:
    named = {kind: {o["name"] for o in items} for kind, items in objects.items()}
    for jt in objects["job_template"]:
        assert jt["project"] in named["project"] and jt["inventory"] in named["inventory"], jt["name"]
        assert set(jt["credentials"]) <= named["credential"] and jt["execution_environment"] in named[
            "execution_environment"] and set(jt["instance_groups"]) <= named["instance_group"], jt["name"]
        assert (ROOT / jt["playbook"]).is_file(), f"{jt['name']}: {jt['playbook']} does not exist"
    (source,) = objects["inventory_source"]
    assert source["source_project"] in named["project"] and (ROOT / source["source_path"]).is_file()
    (cred,) = objects["credential"]
    assert cred["credential_type"] in named["credential_type"]
    for node in workflow(objects)["workflow_nodes"]:
        ujt = node["unified_job_template"]
        assert ujt["type"] == "workflow_approval" or ujt["name"] in named["job_template"], node["identifier"]


def edges(objects: dict[str, Any], kind: str) -> dict[str, set[str]]:
    return {n["identifier"]: {e["identifier"] for e in n.get("related", {}).get(kind, [])}
            for n in workflow(objects)["workflow_nodes"]}


def test_the_workflow_rehearses_asks_then_migrates_and_rolls_back_on_failure(objects: dict[str, Any]) -> None:
    success, failure = edges(objects, "success_nodes"), edges(objects, "failure_nodes")
    path, node = [], "preflight"
    while node:
        path.append(node)
        node = next(iter(success[node]), "") if len(success[node]) <= 1 else ""
        assert node not in path, "cycle"
    assert path[:5] == ["preflight", "backup", "rehearse", "approve", "migrate"], path
    assert path[-2:] == ["validate", "monitor"], path
    for after_approval in path[path.index("migrate"):]:
        assert failure[after_approval] == {"rollback"}, f"{after_approval} must roll back on failure"
    for before in path[:path.index("migrate")]:
        assert not failure[before], f"{before} fails the workflow, production untouched"
    assert success["rollback"] == {"rolled_back"} and not success["rolled_back"]
    known = set(success)
    assert all(t <= known for t in (*success.values(), *failure.values()))


def test_every_template_runs_in_the_container_group_with_the_run_records_volume(objects: dict[str, Any]) -> None:
    (group,) = objects["instance_group"]
    pod = yaml.safe_load(group["pod_spec_override"])
    mount = pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    for jt in objects["job_template"]:
        assert jt["extra_vars"]["run_context_artifacts_dir"] == mount and jt["prevent_instance_group_fallback"]
    assert "run_context_artifacts_dir" in awx.role_options("run_context")


# --- credential and inventories ---------------------------------------------------------------------------------

def test_the_credential_injects_what_the_inventory_reads(objects: dict[str, Any]) -> None:
    (ctype,) = objects["credential_type"]
    injected = set(ctype["injectors"]["env"])
    text = (ROOT / "inventories" / "prod" / "group_vars" / "all" / "main.yml").read_text()
    read = set(re.findall(r"lookup\('ansible\.builtin\.env', '(\w+)'", text))
    assert read <= injected, f"the inventory reads {sorted(read - injected)} that the credential does not inject"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= injected
    fields = {f["id"]: f for f in ctype["inputs"]["fields"]}
    for name, template in ctype["injectors"]["env"].items():
        (field,) = re.findall(r"\{\{ (\w+) \}\}", template)
        assert field in fields, name
        assert fields[field].get("secret", False) == ("PASSWORD" in name or "SECRET" in name), name
    env = awx.inject_credential(ctype, {"production_password": "pw"})
    assert env["VDP_PRODUCTION_PGPASSWORD"] == "pw" and env["VDP_STAGING_PGHOST"] == ""


def inventory_value(inventory: str, expression: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(awx.BIN / "ansible"), "-i", f"inventories/{inventory}/hosts.yml", "localhost", "-m",
         "ansible.builtin.debug", "-a", f"msg={{{{ {expression} }}}}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=awx.ansible_env(env),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return re.search(r"msg: ?(.*)", proc.stdout).group(1).strip().strip("'\"")  # type: ignore[union-attr]


@pytest.mark.parametrize("inventory", ["prod", "staging"])
def test_the_inventory_builds_the_release_and_image_from_the_survey(inventory: str) -> None:
    release = "vdp_app.release ~ '|' ~ vdp_app.kubernetes.image ~ '|' ~ vdp_app.platform"
    assert inventory_value(inventory, release, "-e", "vdp_app_release=2.0.0") == \
        "2.0.0|registry.example.internal/virtue/app:2.0.0|kubernetes"
    assert inventory_value(inventory, release) == "||kubernetes", "no release given: nothing to deploy, no error"
    # AWX 24 sends a blank optional text answer as null; the inventory treats it as unset.
    assert inventory_value(inventory, release, "-e", '{"vdp_app_release": null}') == "||kubernetes"
    options = awx.role_options("app_deploy")
    assert {"namespace", "deployment", "container", "image"} <= set(options["app_deploy_kubernetes"][0]["options"])


def test_an_empty_injected_host_or_user_means_the_inventorys_own() -> None:
    empty = {"VDP_PRODUCTION_PGHOST": "", "VDP_PRODUCTION_PGUSER": ""}
    assert inventory_value("prod", "vdp_production_db.host ~ '/' ~ vdp_production_db.user", env=empty) == \
        "db.example.internal/postgres"
    given = {"VDP_PRODUCTION_PGHOST": "10.0.0.5", "VDP_PRODUCTION_PGUSER": "postgres.abcdef"}
    assert inventory_value("prod", "vdp_production_db.host ~ '/' ~ vdp_production_db.user", env=given) == \
        "10.0.0.5/postgres.abcdef"


# --- playbooks ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("playbook", [p.relative_to(ROOT).as_posix() for p in PLAYBOOKS] + ["awx/apply.yml"])
def test_playbooks_pass_syntax_check(playbook: str) -> None:
    proc = subprocess.run([str(awx.BIN / "ansible-playbook"), "--syntax-check", "-i", "inventories/prod/hosts.yml",
                           playbook], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env=awx.ansible_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_rolled_back_node_fails_the_workflow_naming_the_run_and_strategy() -> None:
    proc = subprocess.run(
        [str(awx.BIN / "ansible-playbook"), "-i", "inventories/prod/hosts.yml", "awx/rolled_back.yml",
         "-e", "vdp_run_id=20261201T091500Z-ab12", "-e", "rollback_strategy=extended"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False, env=awx.ansible_env())
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "run 20261201T091500Z-ab12 failed and was rolled back (strategy extended)" in re.sub(r"\s+", " ",
                                                                                               proc.stdout)
    assert "changed=0" in proc.stdout


# --- execution environment ----------------------------------------------------------------------------------------

def pins(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith(("#", "-"))]


@pytest.fixture(scope="module")
def ee_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ee")
    proc = subprocess.run([str(awx.BIN / "ansible-builder"), "create", "-f", "execution-environment.yml", "-c",
                           str(folder), "--output-filename", "Containerfile"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False, env=awx.ansible_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder


def test_ansible_builder_is_pinned_and_installed() -> None:
    (pin,) = [p for p in pins(ROOT / "requirements-dev.txt") if p.startswith("ansible-builder==")]
    version = subprocess.run([str(awx.BIN / "ansible-builder"), "--version"], capture_output=True, text=True,
                             check=True, timeout=60).stdout.strip()
    assert pin == f"ansible-builder=={version}"


def test_the_build_context_carries_the_pinned_python_packages(ee_context: Path) -> None:
    assert pins(ee_context / "_build" / "requirements.txt") == pins(ROOT / "requirements.txt")
    containerfile = (ee_context / "Containerfile").read_text()
    (core,) = [p for p in pins(ROOT / "requirements.txt") if p.startswith("ansible-core==")]
    runner = next(p for p in pins(ROOT / "requirements-dev.txt") if p.startswith("ansible-runner=="))
    assert f'ARG ANSIBLE_INSTALL_REFS="{core} {runner}"' in containerfile
    # ansible-core 2.19 needs Python >= 3.11; the base image's python3 is 3.9.
    assert 'ARG PYCMD="/usr/bin/python3.11"' in containerfile


def test_the_build_context_carries_the_postgresql_client_of_the_targets_major(ee_context: Path) -> None:
    bindep = (ee_context / "_build" / "bindep.txt").read_text()
    assert re.search(r"^postgresql \[platform:rpm\]$", bindep, re.M)
    assert re.search(r"^postgresql-client-15 \[platform:dpkg\]$", bindep, re.M)
    final = (ee_context / "Containerfile").read_text().split("FROM base AS final", 1)[1]
    enable, install = final.index("-y module enable postgresql:${VDP_PG_MAJOR}"), final.index("install-from-bindep")
    check = final.index('pg_dump --version | grep -Eq " ${VDP_PG_MAJOR}')
    assert enable < install < check and "ARG VDP_PG_MAJOR=15" in final
    major = re.search(r"/usr/lib/postgresql/(\d+)/bin", (ROOT / "inventories/prod/group_vars/all/main.yml").read_text())
    assert major and major.group(1) == "15", "the inventories' vdp_pg_bindir names the image's client major"
    # bindep itself resolves the file on this (Debian) machine to the Debian package.
    listed = subprocess.run([str(awx.BIN / "bindep"), "-f", str(ROOT / "bindep.txt"), "-l", "newline"],
                            capture_output=True, text=True, timeout=60, check=False).stdout.split()
    assert listed in ([], ["postgresql-client-15"])


def test_the_build_context_carries_the_collections(ee_context: Path) -> None:
    built = yaml.safe_load((ee_context / "_build" / "requirements.yml").read_text())
    assert built == yaml.safe_load((ROOT / "requirements.yml").read_text())
    assert {c["name"] for c in built["collections"]} >= {"community.postgresql", "amazon.aws", "kubernetes.core"}
