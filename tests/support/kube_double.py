"""A small Kubernetes API-server double for the app deploy tests (no cluster can run on these machines).

It speaks the real protocol over HTTPS to the real client (kubernetes.core through the kubernetes Python
client, or kubectl): bearer-token auth from a kubeconfig it writes, discovery (`/version`, `/api`,
`/api/v1`, `/apis`, `/apis/apps`, `/apis/apps/v1` listing deployments, deployments/scale and
deployments/status), apps/v1 Deployments (GET, LIST, POST, PUT with resourceVersion conflicts, PATCH in
strategic-merge, merge and JSON-patch form, `dryRun=All`), the autoscaling/v1 Scale subresource and the
status subresource, with Kubernetes' `Status` error bodies.

A controller thread plays the deployment controller: a spec change bumps `metadata.generation`; the
controller observes it a moment later (until then the status is stale: `observedGeneration` lags and
`Progressing` still says `NewReplicaSetAvailable`, as on a real cluster); a template change bumps the
`deployment.kubernetes.io/revision` annotation and rolls pods over with maxSurge/maxUnavailable 25 %,
`updatedReplicas`, `readyReplicas` and `availableReplicas` rising over ~1-3 s, then `Progressing` True
`NewReplicaSetAvailable`. An image matching `never_ready` (default `*:never-ready*`) never becomes ready:
`Progressing` stays `ReplicaSetUpdated`, then turns False `ProgressDeadlineExceeded` after the
deployment's `spec.progressDeadlineSeconds`. Zero counts are omitted from the status (omitempty).

Every request is recorded (method, path, query, Content-Type, body, answer; for writes the object before
and after) so tests can validate every object the client made the server store with kubernetes-validate.
Not implemented (not used by the role): watch, DELETE, other kinds, admission, server-side apply.
"""

from __future__ import annotations

import base64
import copy
import datetime
import fnmatch
import hashlib
import json
import math
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.kube_patch import PatchError, apply_patch
from tests.support.kube_tls import make_certificate

REVISION = "deployment.kubernetes.io/revision"
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def body(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "details": self.details, "code": self.code}


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _not_found(name: str, kind: str = "deployments") -> ApiError:
    return ApiError(404, "NotFound", f'{kind}.apps "{name}" not found', {"name": name, "group": "apps", "kind": kind})


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any
    status: int = 0
    target: str | None = None  # "deployment" | "scale" | "status" for object endpoints
    dry_run: bool = False
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None

    @property
    def is_write(self) -> bool:
        return self.method in ("PATCH", "PUT", "POST")


@dataclass
class _Rollout:
    """The controller's view of one Deployment's pods."""

    template_hash: str
    created: int  # pods of the current ReplicaSet (updatedReplicas)
    ready: int  # of those, ready
    old: int = 0  # ready pods of older ReplicaSets still running
    never_ready: bool = False
    pending_since: float | None = None  # a spec change not yet observed
    last_progress: float = field(default_factory=time.monotonic)
    last_step: float = field(default_factory=time.monotonic)
    revisions: dict[str, int] = field(default_factory=dict)


def template_hash(template: Any) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _int_or_percent(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = total * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


class KubeDouble:
    """Start with `start()`; `add_deployment()` seeds objects; `requests` holds what the client sent."""

    def __init__(self, token: str | None = None, version: str = "1.33.4", never_ready: str = "*:never-ready*",
                 observe_delay: float = 0.4, step_seconds: float = 0.4, folder: Path | None = None) -> None:
        self.token = token or uuid.uuid4().hex
        self.version = version
        self.never_ready = never_ready
        self.observe_delay, self.step_seconds = observe_delay, step_seconds
        self.folder = folder or Path(tempfile.mkdtemp(prefix="kube-double-"))
        self.requests: list[Recorded] = []
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._rollouts: dict[tuple[str, str], _Rollout] = {}
        self._rv = 1000
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.ca_pem = b""

    # -- life cycle ---------------------------------------------------------------------------------------------
    def start(self) -> KubeDouble:
        cert, key, self.ca_pem = make_certificate(self.folder)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.double = self  # type: ignore[attr-defined]
        self._server = server
        self._threads = [threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True),
                         threading.Thread(target=self._control_loop, daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> KubeDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the double first"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path, context: str = "double", namespace: str = "default",
                         token: str | None = None) -> Path:
        """A kubeconfig (mode 0600) whose context `context` reaches this double with its bearer token."""
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": context,
            "clusters": [{"name": "double", "cluster": {
                "server": self.url, "certificate-authority-data": base64.b64encode(self.ca_pem).decode()}}],
            "users": [{"name": "deployer", "user": {"token": token or self.token}}],
            "contexts": [{"name": context, "context": {"cluster": "double", "user": "deployer", "namespace": namespace}}],
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    # -- objects --------------------------------------------------------------------------------------------------
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def add_deployment(self, namespace: str, name: str, image: str, replicas: int = 3, container: str = "app",
                       progress_deadline_seconds: int = 600, env: list[dict[str, str]] | None = None) -> dict[str, Any]:
        """Seed a settled Deployment (revision 1, all replicas available); goes through the same POST path."""
        body = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {
                "replicas": replicas, "progressDeadlineSeconds": progress_deadline_seconds, "revisionHistoryLimit": 10,
                "selector": {"matchLabels": {"app": name}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                    {"name": container, "image": image, "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                     **({"env": env} if env else {})}]}},
            },
        }
        with self._lock:
            created = self._create(namespace, body)
            rollout = self._rollouts[(namespace, name)]
            rollout.created = rollout.ready = replicas
            rollout.pending_since = None
            created["status"]["observedGeneration"] = 1
            self._update_status((namespace, name), time.monotonic())
            return copy.deepcopy(self._objects[(namespace, name)])

    def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._objects[(namespace, name)])

    def wait_settled(self, namespace: str, name: str, timeout: float = 30) -> dict[str, Any]:
        """Wait until the controller has nothing left to do for this Deployment (complete or deadline exceeded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            obj = self.deployment(namespace, name)
            progressing = _condition(obj, "Progressing")
            observed = obj["status"].get("observedGeneration", 0) >= obj["metadata"]["generation"]
            if observed and progressing and progressing["reason"] in ("NewReplicaSetAvailable", "ProgressDeadlineExceeded"):
                return obj
            time.sleep(0.1)
        raise TimeoutError(f"deployment {namespace}/{name} did not settle in {timeout} s")

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.is_write]

    def _create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        name = meta.get("name") or ""
        if (namespace, name) in self._objects:
            raise ApiError(409, "AlreadyExists", f'deployments.apps "{name}" already exists', {"name": name})
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), generation=1, creationTimestamp=_now_iso(),
                    resourceVersion=self._next_rv(), annotations={**meta.get("annotations", {}), REVISION: "1"})
        body["status"] = {}
        self._objects[(namespace, name)] = body
        h = template_hash(body["spec"]["template"])
        self._rollouts[(namespace, name)] = _Rollout(template_hash=h, created=0, ready=0, revisions={h: 1},
                                                     never_ready=self._is_never_ready(body), pending_since=time.monotonic())
        return body

    def _is_never_ready(self, obj: dict[str, Any]) -> bool:
        containers = obj["spec"]["template"].get("spec", {}).get("containers", [])
        return any(fnmatch.fnmatch(c.get("image", ""), self.never_ready) for c in containers)

    def _store(self, key: tuple[str, str], new: dict[str, Any]) -> dict[str, Any]:
        """Store an updated Deployment as the API server does: a no-op writes nothing; spec changes bump generation."""
        old = self._objects[key]
        new["status"] = old["status"]
        new["metadata"] = {**new["metadata"], **{k: old["metadata"][k] for k in
                                                 ("name", "namespace", "uid", "creationTimestamp", "generation")}}
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        new["apiVersion"], new["kind"] = "apps/v1", "Deployment"
        if new == old:
            return new
        if new["spec"] != old["spec"]:
            new["metadata"]["generation"] = old["metadata"]["generation"] + 1
            rollout = self._rollouts[key]
            rollout.pending_since = rollout.pending_since or time.monotonic()
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key] = new
        return new

    # -- the deployment controller ----------------------------------------------------------------------------------
    def _control_loop(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            with self._lock:
                for key, rollout in self._rollouts.items():
                    if rollout.pending_since is not None:
                        if now - rollout.pending_since >= self.observe_delay:
                            self._observe(key, rollout, now)
                    elif now - rollout.last_step >= self.step_seconds:
                        self._step(key, rollout, now)

    def _observe(self, key: tuple[str, str], rollout: _Rollout, now: float) -> None:
        obj = self._objects[key]
        h = template_hash(obj["spec"]["template"])
        if h != rollout.template_hash:
            rollout.old += rollout.ready  # the previous ReplicaSet's ready pods; its unready ones are deleted
            revision = max(rollout.revisions.values()) + 1
            rollout.revisions[h] = revision
            rollout.template_hash, rollout.created, rollout.ready = h, 0, 0
            rollout.never_ready = self._is_never_ready(obj)
            rollout.last_progress = now
            obj["metadata"].setdefault("annotations", {})[REVISION] = str(revision)
        obj["status"]["observedGeneration"] = obj["metadata"]["generation"]
        rollout.pending_since, rollout.last_step = None, now
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._update_status(key, now)

    def _limits(self, obj: dict[str, Any], desired: int) -> tuple[int, int]:
        rolling = obj["spec"].get("strategy", {}).get("rollingUpdate", {})
        surge = _int_or_percent(rolling.get("maxSurge", "25%"), desired, round_up=True)
        unavailable = _int_or_percent(rolling.get("maxUnavailable", "25%"), desired, round_up=False)
        return (surge or (0 if unavailable else 1)), unavailable

    def _step(self, key: tuple[str, str], rollout: _Rollout, now: float) -> None:
        obj = self._objects[key]
        desired = int(obj["spec"].get("replicas", 1))
        surge, unavailable = self._limits(obj, desired)
        before = (rollout.created, rollout.ready, rollout.old)
        if not rollout.never_ready:
            rollout.ready = rollout.created  # pods created last step are ready now
        if rollout.created > desired:
            rollout.created = desired
            rollout.ready = min(rollout.ready, desired)
        removable = rollout.ready + rollout.old - (desired - unavailable)
        if rollout.old and (removable > 0 or desired == 0):
            rollout.old -= rollout.old if desired == 0 else min(rollout.old, removable)
        room = desired + surge - rollout.created - rollout.old
        if rollout.created < desired and room > 0:
            rollout.created += min(desired - rollout.created, room, max(1, surge))
        rollout.last_step = now
        if (rollout.created, rollout.ready, rollout.old) != before:
            rollout.last_progress = now
        self._update_status(key, now)

    def _update_status(self, key: tuple[str, str], now: float) -> None:
        obj, rollout = self._objects[key], self._rollouts[key]
        desired = int(obj["spec"].get("replicas", 1))
        _, unavailable = self._limits(obj, desired)
        available = rollout.ready + rollout.old
        total = rollout.created + rollout.old
        rs = f'ReplicaSet "{key[1]}-{rollout.template_hash}"'
        observed = obj["status"].get("observedGeneration", 0) >= obj["metadata"]["generation"]
        complete = observed and rollout.created == rollout.ready == desired and rollout.old == 0
        deadline = float(obj["spec"].get("progressDeadlineSeconds", 600))
        old_progressing = _condition(obj, "Progressing")
        if complete:
            progressing = ("True", "NewReplicaSetAvailable", f"{rs} has successfully progressed.")
        elif not observed and old_progressing:  # the controller has not seen the change yet: stale status
            progressing = (old_progressing["status"], old_progressing["reason"], old_progressing["message"])
        elif now - rollout.last_progress > deadline:
            progressing = ("False", "ProgressDeadlineExceeded", f"{rs} has timed out progressing.")
        else:
            progressing = ("True", "ReplicaSetUpdated", f"{rs} is progressing.")
        if available >= desired - unavailable:
            available_cond = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        else:
            available_cond = ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        status: dict[str, Any] = {"observedGeneration": obj["status"].get("observedGeneration", 0)}
        counts = {"replicas": total, "updatedReplicas": rollout.created, "readyReplicas": available,
                  "availableReplicas": available, "unavailableReplicas": max(0, total - available)}
        status.update({k: v for k, v in counts.items() if v})  # omitempty, as the API server serialises them
        status["conditions"] = [_make_condition(obj, "Available", *available_cond),
                                _make_condition(obj, "Progressing", *progressing)]
        if status != obj["status"]:
            obj["status"] = status
            obj["metadata"]["resourceVersion"] = self._next_rv()

    # -- request handling (called by _Handler) -----------------------------------------------------------------------
    def handle(self, rec: Recorded, authorization: str) -> tuple[int, dict[str, Any]]:
        if authorization != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        dry_run = rec.query.get("dryRun", [])
        if dry_run and dry_run != ["All"]:
            raise ApiError(400, "BadRequest", f"unsupported dryRun value {dry_run}")
        rec.dry_run = bool(dry_run)
        if rec.query.get("watch", ["false"])[0] in ("true", "1"):
            raise ApiError(405, "MethodNotAllowed", "this API-server double does not implement watch")
        parts = [p for p in rec.path.split("/") if p]
        discovery = self._discovery(parts)
        if discovery is not None:
            if rec.method != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            return 200, discovery
        with self._lock:
            return self._resource(rec, parts)

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        major, minor = self.version.split(".")[:2]
        server = self.url.removeprefix("https://")
        group_version = {"groupVersion": "apps/v1", "version": "v1"}
        table: dict[tuple[str, ...], dict[str, Any]] = {
            ("version",): {"major": major, "minor": minor, "gitVersion": f"v{self.version}", "gitTreeState": "clean",
                           "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
                           "platform": "linux/amd64", "emulationMajor": major, "emulationMinor": minor},
            ("api",): {"kind": "APIVersions", "versions": ["v1"],
                       "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]},
            ("api", "v1"): {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"]}]},
            ("apis",): {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "apps", "versions": [group_version], "preferredVersion": group_version}]},
            ("apis", "apps"): {"kind": "APIGroup", "apiVersion": "v1", "name": "apps", "versions": [group_version],
                               "preferredVersion": group_version},
            ("apis", "apps", "v1"): {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1", "resources": [
                {"name": "deployments", "singularName": "deployment", "namespaced": True, "kind": "Deployment",
                 "verbs": ALL_VERBS, "shortNames": ["deploy"], "categories": ["all"]},
                {"name": "deployments/scale", "singularName": "", "namespaced": True, "group": "autoscaling",
                 "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]},
                {"name": "deployments/status", "singularName": "", "namespaced": True, "kind": "Deployment",
                 "verbs": ["get", "patch", "update"]}]},
        }
        return copy.deepcopy(table.get(tuple(parts)))

    def _resource(self, rec: Recorded, parts: list[str]) -> tuple[int, dict[str, Any]]:
        if parts == ["apis", "apps", "v1", "deployments"] and rec.method == "GET":
            return 200, self._list(None, rec.query)
        if parts[:4] != ["apis", "apps", "v1", "namespaces"] or len(parts) < 6 or parts[5] != "deployments":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = parts[4]
        if len(parts) == 6:
            if rec.method == "GET":
                return 200, self._list(namespace, rec.query)
            if rec.method == "POST":
                return self._post(rec, namespace)
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        key = (namespace, parts[6])
        sub = parts[7] if len(parts) > 7 else ""
        if len(parts) > 8 or sub not in ("", "scale", "status"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if key not in self._objects:
            raise _not_found(key[1])
        rec.target = {"": "deployment", "scale": "scale", "status": "status"}[sub]
        if rec.method == "GET":
            return 200, self._scale(key) if sub == "scale" else copy.deepcopy(self._objects[key])
        if rec.method not in ("PATCH", "PUT") or sub == "status":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        return self._write(rec, key, sub)

    def _list(self, namespace: str | None, query: dict[str, list[str]]) -> dict[str, Any]:
        selector = dict(term.split("=", 1) for term in query.get("labelSelector", [""])[0].split(",") if "=" in term)
        fields = dict(term.split("=", 1) for term in query.get("fieldSelector", [""])[0].split(",") if "=" in term)
        items = [copy.deepcopy(obj) for (ns, name), obj in sorted(self._objects.items())
                 if namespace in (None, ns) and fields.get("metadata.name", name) == name
                 and all(obj["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]
        for item in items:
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return {"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {"resourceVersion": str(self._rv)},
                "items": items}

    def _post(self, rec: Recorded, namespace: str) -> tuple[int, dict[str, Any]]:
        if not isinstance(rec.body, dict) or rec.body.get("kind") != "Deployment":
            raise ApiError(400, "BadRequest", "the body must be an apps/v1 Deployment")
        if rec.dry_run:
            return 201, copy.deepcopy(rec.body)
        created = self._create(namespace, copy.deepcopy(rec.body))
        rec.after = copy.deepcopy(created)
        return 201, copy.deepcopy(created)

    def _scale(self, key: tuple[str, str]) -> dict[str, Any]:
        obj = self._objects[key]
        labels = obj["spec"]["selector"].get("matchLabels", {})
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
                "spec": {"replicas": int(obj["spec"].get("replicas", 1))},
                "status": {"replicas": obj["status"].get("replicas", 0),
                           "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))}}

    def _write(self, rec: Recorded, key: tuple[str, str], sub: str) -> tuple[int, dict[str, Any]]:
        current = self._scale(key) if sub == "scale" else copy.deepcopy(self._objects[key])
        rec.before = copy.deepcopy(current)
        if rec.method == "PUT":
            if not isinstance(rec.body, dict):
                raise ApiError(400, "BadRequest", "the body must be a JSON object")
            version = rec.body.get("metadata", {}).get("resourceVersion")
            if version and version != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on deployments.apps "{key[1]}": the object '
                               "has been modified; please apply your changes to the latest version and try again")
            result = copy.deepcopy(rec.body)
        else:
            try:
                result = apply_patch(current, rec.body, rec.content_type)
            except PatchError as exc:
                raise ApiError(422, "Invalid", f"the patch could not be applied: {exc}") from exc
        # Type metadata is the resource's, whatever the body said (kubernetes.core sends kind: Deployment to /scale).
        result["apiVersion"], result["kind"] = current["apiVersion"], current["kind"]
        if result.get("metadata", {}).get("name", key[1]) != key[1]:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if sub == "scale":
            replicas = result.get("spec", {}).get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise ApiError(422, "Invalid", f"Scale.autoscaling \"{key[1]}\" is invalid: spec.replicas: {replicas!r}")
            deployment = copy.deepcopy(self._objects[key])
            deployment["spec"]["replicas"] = replicas
        else:
            deployment = result
        if not isinstance(deployment.get("spec"), dict) or not isinstance(deployment.get("metadata"), dict):
            raise ApiError(422, "Invalid", f'Deployment.apps "{key[1]}" is invalid: spec and metadata are required')
        deployment = _drop_empty_lists(deployment)  # Go's omitempty: `env: []` is stored as no env at all
        problem = self._schema_problem(deployment)
        if problem:  # the API server refuses mistyped fields (unknown ones it only warns about: validation_errors())
            rec.after = copy.deepcopy(deployment)
            raise ApiError(422, "Invalid", f'Deployment.apps "{key[1]}" is invalid: {problem}')
        if rec.dry_run:
            stored = self._dry_store(key, deployment)
        else:
            stored = self._store(key, deployment)
        answer = self._scale_of(stored) if sub == "scale" else copy.deepcopy(stored)
        rec.after = copy.deepcopy(result if sub == "scale" else stored)
        return 200, answer

    def _dry_store(self, key: tuple[str, str], deployment: dict[str, Any]) -> dict[str, Any]:
        saved_obj, saved_rv = copy.deepcopy(self._objects[key]), self._rv
        saved_pending = self._rollouts[key].pending_since
        try:
            return copy.deepcopy(self._store(key, deployment))
        finally:
            self._objects[key], self._rv = saved_obj, saved_rv
            self._rollouts[key].pending_since = saved_pending

    def _scale_of(self, deployment: dict[str, Any]) -> dict[str, Any]:
        scale = self._scale((deployment["metadata"]["namespace"], deployment["metadata"]["name"]))
        scale["spec"]["replicas"] = deployment["spec"]["replicas"]
        scale["metadata"]["resourceVersion"] = deployment["metadata"]["resourceVersion"]
        return scale

    def _schema_problem(self, obj: dict[str, Any]) -> str | None:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(obj, self.version, strict=False)
        except kubernetes_validate.ValidationError as exc:
            return f"{'.'.join(str(p) for p in exc.path)}: {exc.message}"
        return None

    # -- offline validation of what the client made the server store ------------------------------------------------
    def validation_errors(self, version: str | None = None) -> list[str]:
        """kubernetes-validate (strict) of every object a write produced; [] when all are valid."""
        import kubernetes_validate

        errors = []
        for rec in self.writes():
            if rec.after is None:
                continue
            try:
                kubernetes_validate.validate(rec.after, version or self.version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                errors.append(f"{rec.method} {rec.path}: {path}: {exc.message}")
        return errors


def _drop_empty_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_empty_lists(v) for k, v in value.items() if v != []}
    if isinstance(value, list):
        return [_drop_empty_lists(v) for v in value]
    return value


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c.get("type") == kind), None)


def _make_condition(obj: dict[str, Any], kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    old = _condition(obj, kind) or {}
    now = _now_iso()
    same = old.get("status") == status
    unchanged = same and old.get("reason") == reason and old.get("message") == message
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": old.get("lastUpdateTime", now) if unchanged else now,
            "lastTransitionTime": old.get("lastTransitionTime", now) if same else now}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-apiserver-double"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the double records requests itself."""

    def _serve(self) -> None:
        double: KubeDouble = self.server.double  # type: ignore[attr-defined]
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        rec = Recorded(method=self.command, path=split.path, query=parse_qs(split.query),
                       content_type=self.headers.get("Content-Type", ""), body=None)
        try:
            if raw:
                try:
                    rec.body = json.loads(raw)
                except ValueError as exc:
                    raise ApiError(400, "BadRequest", f"the request body is not JSON: {exc}") from exc
            code, answer = double.handle(rec, self.headers.get("Authorization", ""))
        except ApiError as exc:
            code, answer = exc.code, exc.body()
        rec.status = code
        with double._lock:
            double.requests.append(rec)
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

