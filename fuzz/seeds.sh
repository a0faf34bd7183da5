#!/usr/bin/env bash
# Writes each fuzz target's seed corpus, fuzz/seeds/TARGET, from the repository's own plans and
# data files (and a few hand-picked globs and templates), so the seeds follow the examples.
# Run by fuzz/run.sh; idempotent.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
out=fuzz/seeds
rm -rf "$out"
mkdir -p "$out"/{plan,records,glob,template}

n=0
while IFS= read -r f; do
  n=$((n + 1))
  cp "$f" "$out/plan/$n.yml"
done < <(find examples tests/fidelity -name 'idem.yml' -o -name '*.idem.yml' | LC_ALL=C sort)

# Every input a target once failed on (fuzz/findings/TARGET-what-it-showed) seeds that target,
# so a fixed finding is re-checked by every run.
for f in fuzz/findings/*; do
  t=${f##*/}
  t=${t%%-*}
  [[ -d $out/$t ]] && cp "$f" "$out/$t/finding-${f##*/}"
done

# records: a format byte (0 CSV, 1 JSON, 2 NDJSON) and a chunk-size byte, then the file.
n=0
while IFS= read -r f; do
  n=$((n + 1))
  {
    case $f in *.csv) printf '\000\003' ;; *.json) printf '\001\003' ;; *) printf '\002\003' ;; esac
    cat "$f"
  } >"$out/records/$n"
done < <(find examples tests/fidelity \( -name '*.csv' -o -name '*.json' -o -name '*.ndjson' \) | LC_ALL=C sort)

# glob: PATTERN NUL PATH.
n=0
while IFS='|' read -r pattern path; do
  n=$((n + 1))
  printf '%s\0%s' "$pattern" "$path" >"$out/glob/$n"
done <<'SEEDS'
*.log|var/log/app.log
logs/**/*.gz|logs/2024/01/a.gz
**/tmp/**|a/tmp/b/c
[!.]*|.hidden
build-[0-9][0-9]|build-42
./cache/?/*.[ch]|cache/x/main.c
**|anything/at/all
a/**/b/**/c|a/b/c
SEEDS

# template: a use letter (t text, p path, g glob), the template, then NUL-separated values.
n=0
while IFS='|' read -r tmpl values; do
  n=$((n + 1))
  printf '%s' "$tmpl" >"$out/template/$n"
  IFS=',' read -ra vs <<<"$values"
  for v in "${vs[@]}"; do printf '\0%s' "$v" >>"$out/template/$n"; done
done <<'SEEDS'
phome/{id}/profile.txt|alice
pout/{path:dir}/{name}.json|a/b,report
gcache/{id}-*.tmp|job7
tHello {name}, {{literal}}|world
pa{x}b{y}|1,2
p{path:p}|x/y/z
SEEDS
