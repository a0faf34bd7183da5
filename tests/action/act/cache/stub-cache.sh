#!/usr/bin/env bash
# The local stand-in of actions/cache/{restore,save} for act runs: one tarball per key in
# IDEM_ACT_CACHE_DIR (tests/action/act.sh sets it), absolute paths kept.
set -euo pipefail
dir=${IDEM_ACT_CACHE_DIR:?IDEM_ACT_CACHE_DIR is not set: run through tests/action/act.sh}
mkdir -p "$dir"
entry() { printf '%s/%s.tar' "$dir" "${1//[^A-Za-z0-9._-]/_}"; }
mapfile -t paths < <(printf '%s\n' "$STUB_PATHS" | sed '/^[[:space:]]*$/d')

case ${1:-} in
save)
  target=$(entry "$STUB_KEY")
  if [[ -e $target ]]; then
    echo "::warning::cache entry $STUB_KEY exists already; not saved (as on GitHub)"
    exit 0
  fi
  existing=()
  for p in "${paths[@]}"; do [[ -e $p ]] && existing+=("$p"); done
  if ((${#existing[@]} == 0)); then
    echo "::warning::none of the paths exist; nothing saved under $STUB_KEY"
    exit 0
  fi
  tar -cPf "$target" "${existing[@]}"
  echo "saved ${existing[*]} as $STUB_KEY"
  ;;
restore)
  hit=false matched=""
  if [[ -e $(entry "$STUB_KEY") ]]; then
    hit=true matched=$STUB_KEY
  else
    while IFS= read -r prefix; do
      [[ -n $prefix ]] || continue
      newest=""
      for f in "$dir/${prefix//[^A-Za-z0-9._-]/_}"*.tar; do
        [[ -e $f && (-z $newest || $f -nt $newest) ]] && newest=$f
      done
      if [[ -n $newest ]]; then
        matched=$(basename -- "$newest" .tar)
        break
      fi
    done <<<"$STUB_RESTORE_KEYS"
  fi
  if [[ -n $matched ]]; then
    tar -xPf "$(entry "$matched")"
    echo "restored $matched"
  else
    echo "cache miss for $STUB_KEY"
  fi
  echo "cache-hit=$hit" >>"$GITHUB_OUTPUT"
  echo "cache-matched-key=$matched" >>"$GITHUB_OUTPUT"
  ;;
*)
  echo "usage: stub-cache.sh save|restore" >&2
  exit 2
  ;;
esac
