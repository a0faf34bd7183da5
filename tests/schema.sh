#!/usr/bin/env bash
# The plan schema (schema/plan.schema.json, what `idem schema` prints) against real plans:
# every example and fidelity plan is valid, and every plan in tests/schema/invalid/ is
# rejected both by a JSON Schema validator and by idem itself.
set -euo pipefail
cd "$(dirname "$0")/.."
idem=${IDEM_BIN:-target/debug/idem}
command -v check-jsonschema >/dev/null || { echo "check-jsonschema is missing: run tests/setup.sh"; exit 1; }

diff -u schema/plan.schema.json <("$idem" schema) || {
  echo "schema/plan.schema.json is stale: regenerate it with: idem schema > schema/plan.schema.json"
  exit 1
}

mapfile -t valid < <(find examples tests/fidelity -name idem.yml | sort)
check-jsonschema --schemafile schema/plan.schema.json "${valid[@]}"

ok=0
bad=0
for plan in tests/schema/invalid/*.yml; do
  if check-jsonschema --schemafile schema/plan.schema.json "$plan" >/dev/null 2>&1; then
    echo "FAIL: the schema accepts $plan"
    bad=$((bad + 1))
  elif "$idem" -C "$(dirname "$plan")" plan "$plan" >/dev/null 2>&1 || [ $? -ne 1 ]; then
    echo "FAIL: idem accepts $plan"
    bad=$((bad + 1))
  else
    ok=$((ok + 1))
  fi
done
echo "schema: ${#valid[@]} valid plans accepted; $ok invalid plans rejected by both, $bad not"
[ "$bad" -eq 0 ]
