"""The three PATCH formats of the Kubernetes API, applied to plain JSON objects (used by kube_double.py).

- JSON merge patch (RFC 7386): `application/merge-patch+json`.
- JSON patch (RFC 6902): `application/json-patch+json`.
- Strategic merge patch: `application/strategic-merge-patch+json`, for the built-in kinds this double
  serves (apps/v1 Deployment, autoscaling/v1 Scale). Lists whose Go type declares a patch merge key are
  merged element by element on that key (containers and volumes by name, env by name, ports by
  containerPort, ...); other lists are replaced. Directives: `$patch: delete | replace | merge` (in maps and
  in merge-key list elements), `$retainKeys`, `$deleteFromPrimitiveList/<field>`, `$setElementOrder/<field>`
  (used to order the merged list, then dropped). That is the subset the API server's strategicpatch package
  applies to these kinds; it is not a general implementation (no schema lookup for other kinds).
"""

from __future__ import annotations

import copy
from typing import Any

# Patch merge keys of the list fields of a Deployment (k8s.io/api: `patchMergeKey` struct tags).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "conditions": "type",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
# Primitive lists with patch strategy "merge" (union of values).
MERGED_PRIMITIVE_LISTS = {"finalizers"}


class PatchError(ValueError):
    """The patch cannot be applied (the API server answers 422 or 400)."""


def json_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[_index(doc, part, allow_end=False)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise PatchError(f"path /{'/'.join(parts)} does not exist")
    return doc


def _index(container: list[Any], part: str, allow_end: bool) -> int:
    if part == "-" and allow_end:
        return len(container)
    if not part.isdigit():
        raise PatchError(f"invalid list index {part!r}")
    index = int(part)
    if index > len(container) or (index == len(container) and not allow_end):
        raise PatchError(f"list index {index} out of range")
    return index


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    if isinstance(parent, list):
        parent.insert(_index(parent, parts[-1], allow_end=True), value)
    elif isinstance(parent, dict):
        parent[parts[-1]] = value
    else:
        raise PatchError(f"cannot add below a scalar at /{'/'.join(parts[:-1])}")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _walk(doc, parts[:-1])
    if isinstance(parent, list):
        return parent.pop(_index(parent, parts[-1], allow_end=False))
    if isinstance(parent, dict) and parts[-1] in parent:
        return parent.pop(parts[-1])
    raise PatchError(f"path /{'/'.join(parts)} does not exist")


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation {op!r}")
        parts = _pointer(op["path"])
        kind = op["op"]
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            _walk(doc, parts)
            if parts:
                _remove(doc, parts)
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_walk(doc, source))
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _walk(doc, parts) != op.get("value"):
                raise PatchError(f"test failed at {op['path']}")
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    return doc


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    return _merge_map(copy.deepcopy(target) if isinstance(target, dict) else {}, patch)


def _merge_map(original: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive not in (None, "merge"):
        raise PatchError(f"unknown $patch directive {directive!r}")
    retain = patch.get("$retainKeys")
    orders = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$setElementOrder/")}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            original[field] = [v for v in original.get(field, []) if v not in value]
        elif key.startswith("$"):
            continue
        elif value is None:
            original.pop(key, None)
        elif isinstance(value, dict):
            merged = _merge_map(original[key] if isinstance(original.get(key), dict) else {}, value)
            if merged is None:
                original.pop(key, None)
            else:
                original[key] = merged
        elif isinstance(value, list):
            original[key] = _merge_list(key, original.get(key), value)
        else:
            original[key] = copy.deepcopy(value)
    for field, order in orders.items():
        if isinstance(original.get(field), list):
            original[field] = _order(field, original[field], order)
    if isinstance(retain, list):
        original = {k: v for k, v in original.items() if k in retain}
    return original


def _merge_list(field: str, original: Any, patch: list[Any]) -> list[Any]:
    current = copy.deepcopy(original) if isinstance(original, list) else []
    if field in MERGED_PRIMITIVE_LISTS:
        return current + [v for v in patch if v not in current]
    key = MERGE_KEYS.get(field)
    if key is None or not all(isinstance(item, dict) for item in patch):
        if any(isinstance(item, dict) and "$patch" in item for item in patch):
            raise PatchError(f"$patch directives need a merge key; {field} has none")
        return copy.deepcopy(patch)
    if any(item.get("$patch") == "replace" for item in patch):
        return [{k: v for k, v in item.items() if k != "$patch"} for item in patch if item.get("$patch") != "replace"]
    for item in patch:
        if key not in item:
            raise PatchError(f"an element of {field} has no {key!r} (its merge key)")
        position = next((i for i, old in enumerate(current) if isinstance(old, dict) and old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if position is not None:
                current.pop(position)
            continue
        if position is None:
            current.append(_merge_map({}, item) or {})
        else:
            current[position] = _merge_map(current[position], item) or {}
    return current


def _order(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    key = MERGE_KEYS.get(field)
    if key is None:
        return items
    rank = {entry.get(key): i for i, entry in enumerate(order) if isinstance(entry, dict)}
    return sorted(items, key=lambda item: rank.get(item.get(key), len(rank)))


def apply_patch(target: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    """Apply a PATCH body of the given Content-Type (parameters ignored) to an object."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/strategic-merge-patch+json":
        result = strategic_merge_patch(target, patch)
    elif media == "application/merge-patch+json":
        result = json_merge_patch(target, patch)
    elif media == "application/json-patch+json":
        result = json_patch(target, patch)
    else:
        raise PatchError(f"unsupported patch Content-Type {content_type!r}")
    if not isinstance(result, dict):
        raise PatchError("the patched object is not a JSON object")
    return result
