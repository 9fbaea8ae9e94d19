"""Validates rendered Kubernetes manifests offline; run by `cargo xtask manifests`.

Usage: validate.py --kubernetes 1.30 [--kubernetes 1.37 ...] --kustomizations DIR... -- RENDERED.yaml...

Built-in kinds go to kubernetes-validate (strict: unknown fields are errors) for every Kubernetes version
given. KServe kinds have no schema there and the kserve wheel carries no CRD YAML, so they are checked
against the kserve SDK's OpenAPI-generated model classes (generated from the same Go types as the CRDs):
every field must exist with the right type, required fields must be present, and embedded Kubernetes
objects (containers, probes, metadata) are validated against kubernetes-validate's strict definitions.
A YAML file in a kustomization directory that the kustomization does not list fails (it would never be
rendered, hence never validated), and before anything else a known-bad Deployment and InferenceService
must fail, so a validator that accepts everything cannot pass. Prints one line per resource; exits 1 on
any failure.
"""

import argparse
import importlib
import json
import os
import sys
import types

import importlib_resources
import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource


def load_kserve_models():
    """Imports kserve.models without kserve/__init__.py, which starts importing a whole model server."""
    spec = importlib.util.find_spec("kserve")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the kserve package is not installed")
    package = types.ModuleType("kserve")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["kserve"] = package
    return importlib.import_module("kserve.models")


class KubernetesDefinitions:
    """kubernetes-validate's strict `_definitions.json` of one version, for objects embedded in CRDs."""

    def __init__(self, version):
        schema_dir = "v%s-local-strict" % self.schema_version(version)
        ref = importlib_resources.files("kubernetes_validate").joinpath(
            "kubernetes-json-schema/%s/_definitions.json" % schema_dir
        )
        with importlib_resources.as_file(ref) as path, open(path) as f:
            self.document = json.load(f)
        self.registry = Resource.from_contents(self.document) @ Registry()
        self.names = self.document["$defs"].keys()

    @staticmethod
    def schema_version(version):
        minor = kv_utils.major_minor(version)
        return [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) <= minor][-1]

    def definition(self, sdk_type):
        """`V1Container` -> `io.k8s.api.core.v1.Container` (core and meta first, then a unique match)."""
        for prefix in ("V1", "V2"):
            if sdk_type.startswith(prefix) and not sdk_type.startswith(prefix + "alpha"):
                suffix = ".%s.%s" % (prefix.lower(), sdk_type[len(prefix):])
                break
        else:
            return None
        matches = [name for name in self.names if name.endswith(suffix)]
        for preferred in ("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta."):
            for name in matches:
                if name.startswith(preferred):
                    return name
        return matches[0] if len(matches) == 1 else None

    def errors(self, value, name):
        schema = {"$ref": "%s#/$defs/%s" % (self.document["$id"], name)}
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
        for error in validator.iter_errors(value):
            yield ".".join(str(p) for p in error.absolute_path), error.message


class KserveChecker:
    """Walks a KServe object along the SDK model classes' `openapi_types` and `attribute_map`."""

    PRIMITIVES = {"str": str, "bool": bool, "int": int, "float": (int, float), "object": object}

    def __init__(self, models, definitions):
        self.models = models
        self.definitions = definitions

    def errors(self, value, sdk_type, path):
        if sdk_type.startswith("list["):
            if not isinstance(value, list):
                yield path, "expected a list"
                return
            for i, item in enumerate(value):
                yield from self.errors(item, sdk_type[5:-1], "%s[%d]" % (path, i))
        elif sdk_type.startswith("dict("):
            if not isinstance(value, dict):
                yield path, "expected a map"
                return
            item_type = sdk_type[5:-1].split(",", 1)[1].strip()
            for key, item in value.items():
                yield from self.errors(item, item_type, "%s.%s" % (path, key))
        elif sdk_type in self.PRIMITIVES:
            if not isinstance(value, self.PRIMITIVES[sdk_type]) or (
                sdk_type in ("int", "float") and isinstance(value, bool)
            ):
                yield path, "expected %s, found %r" % (sdk_type, value)
        elif hasattr(self.models, sdk_type):
            yield from self.model_errors(value, getattr(self.models, sdk_type), path)
        elif (name := self.definitions.definition(sdk_type)) is not None:
            for where, message in self.definitions.errors(value, name):
                yield "%s.%s" % (path, where) if where else path, message
        else:
            yield path, "no schema for SDK type %s" % sdk_type

    def model_errors(self, value, cls, path):
        if not isinstance(value, dict):
            yield path, "expected an object of %s" % cls.__name__
            return
        by_json_name = {json_name: attr for attr, json_name in cls.attribute_map.items()}
        for key, item in value.items():
            attr = by_json_name.get(key)
            if attr is None:
                yield "%s.%s" % (path, key), "unknown field of %s" % cls.__name__
            else:
                yield from self.errors(item, cls.openapi_types[attr], "%s.%s" % (path, key))
        # The generated constructors reject a missing required field (client-side validation).
        try:
            cls(**{attr: value[key] for key, attr in by_json_name.items() if key in value})
        except ValueError as error:
            yield path, str(error)


def kserve_type(document):
    version = document.get("apiVersion", "").split("/")[-1]
    return "V1%s%s" % (version[2:], document.get("kind", "")) if version.startswith("v1") else None


def problems(document, models, versions):
    """(field path, message) for everything wrong with one resource, and what it was checked against."""
    found = []
    if document.get("apiVersion", "").startswith("serving.kserve.io/"):
        sdk_type = kserve_type(document)
        if not hasattr(models, sdk_type or ""):
            return [("", "the kserve SDK has no model %s" % sdk_type)], "kserve"
        for version in versions:
            checker = KserveChecker(models, KubernetesDefinitions(version))
            found += [(p, "%s (k8s %s)" % (m, version)) for p, m in
                      checker.errors(document, sdk_type, document["kind"])]
        return found, "the kserve SDK's %s model" % sdk_type
    for version in versions:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path)
            found.append((where, "%s (k8s %s)" % (error.message, version)))
        except kubernetes_validate.SchemaNotFoundError as error:
            found.append(("", error.message))
    return found, "Kubernetes %s (strict)" % ", ".join(versions)


def unlisted_files(directory):
    """YAML files in a kustomization directory that its kustomization.yaml neither lists nor patches with."""
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    listed = set(kustomization.get("resources", []))
    listed |= {patch["path"] for patch in kustomization.get("patches", []) if "path" in patch}
    return sorted(
        name for name in os.listdir(directory)
        if name.endswith((".yaml", ".yml")) and name != "kustomization.yaml" and name not in listed
    )


KNOWN_BAD = [
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad"}, "spec": {
        "selector": {"matchLabels": {"app": "bad"}},
        "template": {"metadata": {"labels": {"app": "bad"}}, "spec": {
            "containers": [{"name": "kiln", "image": "kiln", "readinessProbe": {"periodSecond": 5}}]}}}},
    {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "bad"},
     "spec": {"predictor": {"model": {"runtime": "kiln", "storageUri": "pvc://x"}}}},
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubernetes", action="append", required=True, help="Kubernetes version")
    parser.add_argument("--kustomizations", nargs="+", required=True, help="kustomization directories")
    parser.add_argument("files", nargs="+", help="rendered manifests")
    args = parser.parse_args()

    models = load_kserve_models()
    for document in KNOWN_BAD:
        if not problems(document, models, args.kubernetes)[0]:
            raise SystemExit("self-test: the known-bad %s passed validation" % document["kind"])
    failures = 0
    for directory in args.kustomizations:
        for name in unlisted_files(directory):
            failures += 1
            print("FAIL %s: not listed in its kustomization.yaml, so never validated"
                  % os.path.join(directory, name))
    for filename in args.files:
        with open(filename) as f:
            documents = [d for d in yaml.safe_load_all(f) if d]
        for document in documents:
            resource = "%s %s/%s" % (
                os.path.basename(filename),
                document.get("kind"),
                document.get("metadata", {}).get("name"),
            )
            found, against = problems(document, models, args.kubernetes)
            if found:
                failures += 1
                for where, message in found:
                    print("FAIL %s: %s: %s" % (resource, where, message))
            else:
                print("ok   %s against %s" % (resource, against))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
