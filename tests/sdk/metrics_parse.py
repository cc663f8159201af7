"""Parses Prometheus text exposition from stdin with the reference Python client's parser
(strict: a malformed line raises) and prints the families as JSON for the Rust test to check."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    families[fam.name] = {
        "type": fam.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in fam.samples],
    }
json.dump(families, sys.stdout)
