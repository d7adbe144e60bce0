"""schemathesis hooks for the LXD 5.0.2 REST spec run (tests/schemathesis.sh).

1. The fixture patch, kept here in code so that it stays visible and minimal. LXD's generated
   `doc/rest-api.yaml` (tag lxd-5.0.2, unmodified beside this file) is not valid swagger 2.0 in
   two ways that stop schemathesis:
   - it leaves out the declaration of most path parameters (`{name}`, `{fingerprint}`, ...):
     each undeclared one is declared at the path level as a required string;
   - four operations (POST /1.0/images, /1.0/instances, .../files, .../metadata/templates) list a
     second, schema-less "raw" body parameter beside the JSON one (swagger allows one body):
     the schema-less one is dropped, so the JSON body is what gets generated.
   Nothing else changes.
2. The check: any 5xx but 501 (LXD's and bivy's "not implemented") is a failure.
"""

import re

import schemathesis


@schemathesis.hook
def before_load_schema(context, raw_schema):
    for path, item in raw_schema.get("paths", {}).items():
        for op in item.values():
            if isinstance(op, dict) and "parameters" in op:
                op["parameters"] = [
                    p for p in op["parameters"] if not (p.get("in") == "body" and "schema" not in p)
                ]
        declared = {p.get("name") for p in item.get("parameters", []) if p.get("in") == "path"}
        for op in item.values():
            if isinstance(op, dict):
                declared |= {
                    p.get("name") for p in op.get("parameters", []) if p.get("in") == "path"
                }
        for name in re.findall(r"\{([^}]+)\}", path.split("?", 1)[0]):
            if name not in declared:
                item.setdefault("parameters", []).append(
                    {"name": name, "in": "path", "required": True, "type": "string"}
                )


@schemathesis.check
def no_server_error_but_501(response, case):
    if response.status_code >= 500 and response.status_code != 501:
        raise AssertionError(
            f"server error {response.status_code} on {case.method} {case.formatted_path}: "
            f"{response.text[:500]}"
        )
