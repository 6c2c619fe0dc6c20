"""A small kustomize renderer for the manifests in deploy/k8s, so that tests read what a cluster would get.

It does what those manifests use, the way kustomize does it, and refuses everything else by name
(an unknown field, patch form or list would otherwise be rendered silently wrong):

- ``resources``: YAML files (several documents each) and directories holding a kustomization;
- ``components`` (``kind: Component``), applied to everything accumulated so far;
- ``configMapGenerator`` from files, with kustomize's content-hash name suffix (``api/hasher``)
  unless ``options.disableNameSuffixHash``, and references to the generated names rewritten;
- ``patches``: strategic merge on one ``target`` (kind and name), with the merge keys of the pod
  fields below; lists of scalars and ``tolerations`` are replaced, as Kubernetes declares them;
- ``namespace``, ``labels`` (``includeTemplates``, never ``includeSelectors``) and ``images``.

Order as in kustomize: resources, components, generators, then patches, namespace, labels, images.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

FIELDS = {
    "Kustomization": {"apiVersion", "kind", "namespace", "labels", "resources", "components"}
    | {"configMapGenerator", "patches", "images"},
    "Component": {"apiVersion", "kind", "resources", "configMapGenerator", "patches"},
}
CLUSTER_SCOPED = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
)
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
# patchMergeKey of the list fields a patch may touch (k8s.io/api/core/v1 types).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
REPLACED_LISTS = frozenset({"tolerations"})  # no patchMergeKey: a patch replaces the whole list


class KustomizeError(Exception):
    """Something the real kustomize would refuse, or that this renderer does not do."""


def build(directory: Path) -> list[Resource]:
    """Render the kustomization in ``directory`` like ``kustomize build``."""
    return _accumulate(directory.resolve(), [], "Kustomization")


def config_map_hash(name: str, data: dict[str, str]) -> str:
    """kustomize's name suffix for a ConfigMap: the SHA-256 of its kind, name and data as Go encodes
    them in JSON (sorted keys, no spaces, HTML characters escaped), 10 hex digits with some swapped."""
    encoded = json.dumps(
        {"data": data, "kind": "ConfigMap", "name": name},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        encoded = encoded.replace(char, escaped)  # Go's encoder escapes these for HTML
    encoded = encoded.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))  # as kustomize spells it


def pod_specs(resource: Resource) -> Iterator[dict[str, Any]]:
    """The pod spec of a workload (none for other kinds)."""
    if resource["kind"] in WORKLOADS:
        yield resource["spec"]["template"]["spec"]


def _accumulate(directory: Path, resources: list[Resource], kind: str) -> list[Resource]:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if spec.get("kind", "Kustomization") != kind:
        raise KustomizeError(f"{path}: expected kind {kind}, found {spec.get('kind')}")
    unknown = set(spec) - FIELDS[kind]
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not support: {sorted(unknown)}")
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            resources.extend(_accumulate(target, [], "Kustomization"))
        else:
            resources.extend(_documents(_inside(directory, target)))
    for entry in spec.get("components", []):
        resources = _accumulate((directory / entry).resolve(), resources, "Component")
    renames: dict[str, str] = {}
    for generator in spec.get("configMapGenerator", []):
        config_map = _generate(directory, generator)
        renames[generator["name"]] = config_map["metadata"]["name"]
        resources.append(config_map)
    for patch in spec.get("patches", []):
        _patch(directory, patch, resources)
    if "namespace" in spec:
        _set_namespace(resources, spec["namespace"])
    for entry in spec.get("labels", []):
        _add_labels(resources, entry)
    for image in spec.get("images", []):
        _set_image(resources, image)
    _rename_config_maps(resources, renames)
    _check_unique(resources, path)
    return resources


def _inside(root: Path, target: Path) -> Path:
    if not target.is_relative_to(root):
        raise KustomizeError(f"{target}: kustomize refuses files outside the kustomization root {root}")
    return target


def _documents(path: Path) -> list[Resource]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    for doc in documents:
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
            raise KustomizeError(f"{path}: every document needs apiVersion, kind and metadata")
    return documents


def _generate(directory: Path, generator: dict[str, Any]) -> Resource:
    unknown = set(generator) - {"name", "files", "options"}
    options = generator.get("options", {})
    if unknown or set(options) - {"disableNameSuffixHash"}:
        raise KustomizeError(f"configMapGenerator {generator['name']}: unsupported {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in generator["files"]:
        key, _, source = entry.partition("=") if "=" in entry else ("", "", entry)
        path = _inside(directory, (directory / source).resolve())
        data[key or path.name] = path.read_text(encoding="utf-8")
    name = generator["name"]
    if not options.get("disableNameSuffixHash", False):
        name = f"{name}-{config_map_hash(name, data)}"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def _patch(directory: Path, patch: dict[str, Any], resources: list[Resource]) -> None:
    target = patch.get("target", {})
    if set(patch) != {"path", "target"} or set(target) != {"kind", "name"}:
        raise KustomizeError(f"patch {patch}: give `path` and a `target` with kind and name only")
    body = yaml.safe_load(
        _inside(directory, (directory / patch["path"]).resolve()).read_text(encoding="utf-8")
    )
    if not isinstance(body, dict):
        raise KustomizeError(f"{patch['path']}: only strategic merge patches (a mapping) are supported")
    matches = [
        r for r in resources if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]
    ]
    if len(matches) != 1:
        raise KustomizeError(f"patch {patch['path']}: {len(matches)} resources match {target}")
    body = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
    metadata = body.get("metadata", {})
    body["metadata"] = {k: v for k, v in metadata.items() if k not in ("name", "namespace")}
    _merge(matches[0], body)


def _merge(original: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if key.startswith("$"):
            raise KustomizeError(f"patch directive {key} is not supported")
        if value is None:
            original.pop(key, None)
        elif isinstance(value, dict) and isinstance(original.get(key), dict):
            _merge(original[key], value)
        elif isinstance(value, list) and value and isinstance(value[0], dict) and key not in REPLACED_LISTS:
            if key not in MERGE_KEYS:
                raise KustomizeError(f"patching the list {key!r}: its merge key is not known here")
            _merge_list(original.setdefault(key, []), value, MERGE_KEYS[key])
        else:
            original[key] = copy.deepcopy(value)


def _merge_list(original: list[dict[str, Any]], patch: list[dict[str, Any]], key: str) -> None:
    for item in patch:
        found = [o for o in original if o.get(key) == item[key]]
        if found:
            _merge(found[0], item)
        else:
            original.append(copy.deepcopy(item))


def _set_namespace(resources: list[Resource], namespace: str) -> None:
    for resource in resources:
        if resource["kind"] == "Namespace":
            if resource["metadata"]["name"] != namespace:
                raise KustomizeError(
                    f"Namespace {resource['metadata']['name']} differs from namespace: {namespace}"
                )
        elif resource["kind"] not in CLUSTER_SCOPED:
            resource["metadata"]["namespace"] = namespace


def _add_labels(resources: list[Resource], entry: dict[str, Any]) -> None:
    if entry.get("includeSelectors", False) or set(entry) - {"pairs", "includeSelectors", "includeTemplates"}:
        raise KustomizeError(f"labels {entry}: only pairs and includeTemplates are supported")
    for resource in resources:
        resource["metadata"].setdefault("labels", {}).update(entry["pairs"])
        if entry.get("includeTemplates", False) and resource["kind"] in WORKLOADS:
            template = resource["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {}).update(entry["pairs"])


def _set_image(resources: list[Resource], image: dict[str, Any]) -> None:
    if set(image) - {"name", "newName", "newTag"}:
        raise KustomizeError(f"images {image}: only name, newName and newTag are supported")
    for resource in resources:
        for spec in pod_specs(resource):
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                name, _, tag = container["image"].partition(":")
                if "@" in container["image"] or "/" in tag:
                    raise KustomizeError(f"image {container['image']}: digests and ports are not supported")
                if name == image["name"]:
                    new_tag = image.get("newTag", tag)
                    new_name = image.get("newName", name)
                    container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def _rename_config_maps(resources: list[Resource], renames: dict[str, str]) -> None:
    for resource in resources:
        for spec in pod_specs(resource):
            for volume in spec.get("volumes", []):
                if "projected" in volume:
                    raise KustomizeError(f"volume {volume['name']}: projected volumes are not supported")
                if "configMap" in volume:
                    ref = volume["configMap"]
                    ref["name"] = renames.get(ref["name"], ref["name"])
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("configMapKeyRef")
                    if ref is not None:
                        ref["name"] = renames.get(ref["name"], ref["name"])
                for source in container.get("envFrom", []):
                    if "configMapRef" in source:
                        source["configMapRef"]["name"] = renames.get(
                            source["configMapRef"]["name"], source["configMapRef"]["name"]
                        )


def _check_unique(resources: list[Resource], path: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for resource in resources:
        key = (resource["kind"], resource["metadata"].get("namespace", ""), resource["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{path}: {key} is defined twice")
        seen.add(key)
