#!/usr/bin/env bash
# The generated-case suite (host/tests/it/generated.rs) for hours, as a release asks: round after
# round of generated plans and kill points, each round with the next seed, until the time is up
# or a round fails (its output, with the minimal case and the replay command, is kept).
#
#   tests/soak.sh                  4 hours from a random seed
#   tests/soak.sh 8 0x1234         8 hours from seed 0x1234
#   IDEM_GEN_CASES=5000 IDEM_GEN_KILLS=2000 tests/soak.sh 1    bigger rounds (defaults below)
#   IDEM_GEN_INCLUDE=db-file-mix tests/soak.sh 1               with a known defect's class back in
#
# Logs go to target/soak/ (one file per round); the last line says how many rounds passed.
set -euo pipefail
cd "$(dirname "$0")/.."

hours=${1:-4}
seed=$((${2:-$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')}))
cases=${IDEM_GEN_CASES:-3000}
kills=${IDEM_GEN_KILLS:-1000}
deadline=$((SECONDS + $(awk -v h="$hours" 'BEGIN { printf "%d", h * 3600 }')))
logs=target/soak
mkdir -p "$logs"

bash tests/setup.sh
cargo test --workspace --locked --test it --no-run

rounds=0
while ((SECONDS < deadline)); do
  round_seed=$(printf '%#x' "$seed")
  log="$logs/round-$round_seed.log"
  echo "soak: round $((rounds + 1)), IDEM_GEN_SEED=$round_seed, $cases cases, $kills kill points"
  if ! IDEM_GEN_SEED=$round_seed IDEM_GEN_CASES=$cases IDEM_GEN_KILLS=$kills \
    cargo test --workspace --locked --test it -- generated:: --nocapture --test-threads=1 >"$log" 2>&1; then
    grep -A60 '^\*\*\*' "$log" || tail -60 "$log"
    echo "soak: round with IDEM_GEN_SEED=$round_seed FAILED after $rounds rounds passed; log: $log"
    exit 1
  fi
  grep -h 'cases passed in\|plans (seed' "$log" || true
  rounds=$((rounds + 1))
  seed=$((seed + 1))
done
echo "soak: $rounds rounds passed in $((SECONDS / 60)) min ($cases cases and $kills kill points each)"
