"""The Kubernetes API permissions the operator's source needs, read from its code with `ast`.

Two ways the operator talks to the API server:
- its `Kube` wrapper (operator/tunewright_operator/kube.py) over the official client: each wrapper method's
  CoreV1Api / CustomObjectsApi calls give verbs and resources (a custom object's plural is the wrapper's
  first argument, resolved at every call site); only wrapper methods that are called count;
- Kopf: every `@kopf.on.*` / `@kopf.timer` / `@kopf.daemon` resource is listed and watched; handlers other
  than on.event/index make Kopf patch the object (finalizers, progress annotations); `kopf.event(...)`,
  `kopf.info(...)` and Kopf's own handler reports create core Events.
An owner reference with `blockOwnerDeletion: true` needs `update` on the owner's `finalizers` subresource
(the OwnerReferencesPermissionEnforcement admission plugin). The official client's LeaseLock (leader election)
gets, creates and updates its Lease.
A permission is (apiGroup, resource, verb).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

Permission = tuple[str, str, str]

_VERBS = {"read": "get", "get": "get", "list": "list", "create": "create", "patch": "patch", "replace": "update",
          "delete": "delete", "delete_collection": "deletecollection"}
_CORE = re.compile(r"^(read|list|create|patch|replace|delete_collection|delete)_(?:namespaced_)?([a-z_]+?)"
                   r"(_status|_log)?(?:_for_all_namespaces)?$")
_CUSTOM = re.compile(r"^(get|list|create|patch|replace|delete)_(?:namespaced|cluster)_custom_object(_status)?$")
_WATCHING = {"event", "index"}  # handler kinds that make Kopf only list and watch
PLURAL = "<plural>"
LEASE = {("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")}


def _plural(snake: str) -> str:
    word = snake.replace("_", "")
    return word if word.endswith("s") else word + "s"


def _api_call(api: str, method: str, group: str) -> set[tuple[str, str, str]]:
    if api == "core" and (m := _CORE.match(method)):
        verb, kind, sub = m.groups()
        return {("", _plural(kind) + ("/" + sub[1:] if sub else ""), _VERBS[verb])}
    if api == "custom" and (m := _CUSTOM.match(method)):
        verb, sub = m.groups()
        return {(group, PLURAL + ("/status" if sub else ""), _VERBS[verb])}
    raise AssertionError(f"kube.py calls {api}.{method}: teach tests/chart/chart_rbac.py its verb and resource")


def _constants(tree: ast.Module) -> dict[str, str]:
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for t in node.targets if isinstance(t, ast.Name)}


def wrapper_permissions(kube_py: Path, group: str) -> dict[str, set[tuple[str, str, str]]]:
    """Kube method name -> the permissions its body needs (through other Kube methods too)."""
    tree = ast.parse(kube_py.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Kube")
    direct: dict[str, set[tuple[str, str, str]]] = {}
    calls: dict[str, set[str]] = {}
    for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
        direct[fn.name], calls[fn.name] = set(), set()
        for node in ast.walk(fn):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func.value
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                if target.attr in ("core", "custom"):
                    direct[fn.name] |= _api_call(target.attr, node.func.attr, group)
            elif isinstance(target, ast.Name) and target.id == "self":
                calls[fn.name].add(node.func.attr)
    resolved: dict[str, set[tuple[str, str, str]]] = {}

    def closure(name: str, seen: frozenset[str] = frozenset()) -> set[tuple[str, str, str]]:
        out = set(direct.get(name, set()))
        for callee in calls.get(name, set()) - seen - {name}:
            out |= closure(callee, seen | {name})
        return out

    for name in direct:
        resolved[name] = closure(name)
    return resolved


def _is_kube(node: ast.expr) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name == "kube"


def _kopf_kind(call: ast.Call) -> str | None:
    """'event', 'create', 'timer', ... for kopf.on.X(...) / kopf.timer(...) / kopf.daemon(...) decorators."""
    func = call.func
    if isinstance(func, ast.Attribute):
        owner = func.value
        if isinstance(owner, ast.Attribute) and owner.attr == "on" and isinstance(owner.value, ast.Name) \
                and owner.value.id == "kopf":
            return func.attr
        if isinstance(owner, ast.Name) and owner.id == "kopf" and func.attr in ("timer", "daemon", "index"):
            return func.attr
    return None


def _strings(call: ast.Call, names: dict[str, str], tuples: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    for arg in call.args:
        if isinstance(arg, ast.Starred) and isinstance(arg.value, ast.Name):
            out += tuples.get(arg.value.id, [])
        elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            out.append(arg.value)
        elif isinstance(arg, ast.Name) and arg.id in names:
            out.append(names[arg.id])
    return out


def _resource(args: list[str]) -> tuple[str, str] | None:
    """(apiGroup, plural) from Kopf's positional selector: (plural), (group or version, plural) or
    (group, version, plural)."""
    if not args:
        return None  # on.startup, on.login, ...
    plural = args[-1]
    head = args[0] if len(args) > 1 else "v1"
    group = "" if head == "v1" else head.split("/")[0]
    return group, plural


def _owner_finalizers(node: ast.Dict, group: str) -> set[Permission]:
    """An owner reference literal `{"kind": K, ..., "blockOwnerDeletion": True}` of one of our kinds."""
    items = {k.value: v for k, v in zip(node.keys, node.values, strict=True)
             if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    blocks = items.get("blockOwnerDeletion")
    kind = items.get("kind")
    if isinstance(blocks, ast.Constant) and blocks.value is True and isinstance(kind, ast.Constant):
        return {(group, f"{kind.value.lower()}s/finalizers", "update")}
    return set()


def required_permissions(package: Path) -> set[Permission]:
    """Everything the operator package in `package` needs from the API server."""
    kube_py = package / "kube.py"
    names: dict[str, str] = {}
    for path in package.glob("*.py"):
        names |= _constants(ast.parse(path.read_text()))
    group = names["GROUP"]
    wrappers = wrapper_permissions(kube_py, group)
    needed: set[Permission] = set()
    kopf_handlers = False
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        tuples = {t.id: [names.get(e.id, "") if isinstance(e, ast.Name) else e.value for e in node.value.elts]
                  for node in ast.walk(tree) if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple)
                  for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                needed |= _owner_finalizers(node, group)
            if isinstance(node, ast.Name) and node.id == "LeaseLock":
                needed |= LEASE
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and _is_kube(func.value) and func.attr in wrappers:
                for api_group, resource, verb in wrappers[func.attr]:
                    if PLURAL in resource:
                        (plural,) = _strings(ast.Call(func=func, args=node.args[:1], keywords=[]), names, tuples)
                        resource = resource.replace(PLURAL, plural)
                    needed.add((api_group, resource, verb))
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "kopf" \
                    and func.attr in ("event", "info", "warn", "exception"):
                needed.add(("", "events", "create"))
            elif (kind := _kopf_kind(node)) is not None:
                resource = _resource(_strings(node, names, tuples))
                if resource is None:
                    continue
                kopf_handlers = True
                api_group, plural = resource
                needed |= {(api_group, plural, "list"), (api_group, plural, "watch")}
                if kind not in _WATCHING:
                    needed.add((api_group, plural, "patch"))
    if kopf_handlers:
        needed.add(("", "events", "create"))  # Kopf reports handler outcomes as Events
    return needed


def granted_permissions(rules: list[dict[str, list[str]]]) -> set[Permission]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
