#!/usr/bin/env python3
"""Validates every object of a rendered chart (multi-document YAML on stdin) against the
Kubernetes OpenAPI schemas of the versions given, with kubernetes-validate. Kinds that have no
schema there (custom resources: ServiceMonitor, PodMonitor, PrometheusRule, cert-manager's) are
skipped and named. Exit 1 on any invalid object."""
import sys
import yaml
import kubernetes_validate

docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
failed = 0
for version in sys.argv[1:]:
    checked, skipped = 0, set()
    for d in docs:
        name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(d, version, strict=True)
            checked += 1
        except kubernetes_validate.SchemaNotFoundError:
            skipped.add(f"{d.get('apiVersion')} {d.get('kind')}")
        except kubernetes_validate.ValidationError as e:
            failed += 1
            print(f"[helm] {version}: {name} is invalid: {e.message} at {list(e.path)}", file=sys.stderr)
    note = f"; skipped (no schema for custom resources): {', '.join(sorted(skipped))}" if skipped else ""
    print(f"[helm] kubernetes {version}: {checked} objects valid{note}", file=sys.stderr)
sys.exit(1 if failed else 0)
