#!/usr/bin/env python3
"""Independent oracle for the FHIR STU3 documents nems-edge writes.

Usage: check_fhir.py XSD_DIR FILE...

Every ``.xml`` file is validated against ``XSD_DIR/fhir-single.xsd`` with lxml (falling back to
the per-resource schema, which includes ``fhir-base.xsd``, if the single schema cannot be
loaded) and parsed with the ``fhir.resources`` STU3 model named by its root element. Every
``.json`` file is checked against the FHIR JSON rules a model does not check (``resourceType``
first, no empty strings, arrays or objects, no ``null`` outside ``_x`` arrays) and parsed with
the model named by its ``resourceType``. When ``x.xml`` and ``x.json`` are both given, their
parsed models must be equal (the two renderings of one resource).

Prints one line per file and exits 1 if any file fails, 2 on a usage or set-up error.
"""

import importlib
import json
import sys
from pathlib import Path

from lxml import etree

FHIR_NS = "{http://hl7.org/fhir}"


def model(resource_type):
    module = importlib.import_module(f"fhir.resources.STU3.{resource_type.lower()}")
    return getattr(module, resource_type)


class Schemas:
    """Loads fhir-single.xsd once, or per-resource schemas if it cannot be loaded."""

    def __init__(self, xsd_dir):
        self.xsd_dir = Path(xsd_dir)
        self.single = None
        self.per_resource = {}
        try:
            self.single = etree.XMLSchema(etree.parse(str(self.xsd_dir / "fhir-single.xsd")))
            print("schema: fhir-single.xsd")
        except (etree.XMLSchemaParseError, OSError) as e:
            print(f"schema: fhir-single.xsd did not load ({e}); using per-resource schemas")

    def get(self, resource_type):
        if self.single is not None:
            return self.single
        if resource_type not in self.per_resource:
            path = self.xsd_dir / f"{resource_type.lower()}.xsd"
            self.per_resource[resource_type] = etree.XMLSchema(etree.parse(str(path)))
        return self.per_resource[resource_type]


def check_xml(path, schemas):
    data = path.read_bytes()
    # A parser without entity expansion or network access, as for untrusted input.
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    doc = etree.fromstring(data, parser)
    if not doc.tag.startswith(FHIR_NS):
        raise ValueError(f"root element {doc.tag} is not in the fhir namespace")
    resource_type = doc.tag[len(FHIR_NS):]
    schema = schemas.get(resource_type)
    if not schema.validate(etree.ElementTree(doc)):
        errors = "; ".join(f"line {e.line}: {e.message}" for e in schema.error_log)
        raise ValueError(f"xsd: {errors}")
    return model(resource_type).model_validate_xml(data)


def json_rules(value, where, in_ext_array=False):
    if value is None and not in_ext_array:
        raise ValueError(f"null at {where}")
    if isinstance(value, str) and value == "":
        raise ValueError(f"empty string at {where}")
    if isinstance(value, list):
        if not value:
            raise ValueError(f"empty array at {where}")
        for i, item in enumerate(value):
            json_rules(item, f"{where}[{i}]", in_ext_array)
    if isinstance(value, dict):
        if not value:
            raise ValueError(f"empty object at {where}")
        for key, item in value.items():
            json_rules(item, f"{where}.{key}", key.startswith("_") and isinstance(item, list))


def check_json(path):
    data = path.read_bytes()
    doc = json.loads(data)
    if not isinstance(doc, dict) or next(iter(doc), None) != "resourceType":
        raise ValueError("resourceType is not the first member")
    json_rules(doc, doc["resourceType"])
    return model(doc["resourceType"]).model_validate_json(data)


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    schemas = Schemas(argv[1])
    failed = 0
    parsed = {}
    for name in argv[2:]:
        path = Path(name)
        try:
            if path.suffix == ".xml":
                resource = check_xml(path, schemas)
            elif path.suffix == ".json":
                resource = check_json(path)
            else:
                raise ValueError("unknown file type")
            parsed.setdefault(path.with_suffix(""), {})[path.suffix] = resource
            print(f"ok   {path.name} ({resource.get_resource_type()})")
        except Exception as e:  # noqa: BLE001 - report every failure, then exit 1
            failed += 1
            print(f"FAIL {path.name}: {type(e).__name__}: {e}")
    pairs = 0
    for stem, renderings in parsed.items():
        if len(renderings) == 2:
            pairs += 1
            xml, js = renderings[".xml"].model_dump(), renderings[".json"].model_dump()
            if xml != js:
                failed += 1
                print(f"FAIL {stem.name}: xml and json differ:\n  xml  {xml}\n  json {js}")
    print(f"{len(argv) - 2} files, {pairs} xml/json pairs compared, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
