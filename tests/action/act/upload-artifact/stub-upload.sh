#!/usr/bin/env bash
# The local stand-in of actions/upload-artifact (see action.yml beside it).
set -euo pipefail
dir=${IDEM_ACT_CACHE_DIR:?IDEM_ACT_CACHE_DIR is not set: run through tests/action/act.sh}
if [[ ! -f $STUB_PATH ]]; then
  if [[ $STUB_IF_NO_FILES == error ]]; then
    echo "::error::no file at $STUB_PATH"
    exit 1
  fi
  echo "::warning::no file at $STUB_PATH; nothing uploaded"
  exit 0
fi
[[ $STUB_NAME =~ ^[A-Za-z0-9._-]+$ ]] || {
  echo "::error::artifact name '$STUB_NAME' is not one GitHub takes"
  exit 1
}
[[ ! -e $dir/artifacts/$STUB_NAME ]] || {
  echo "::error::an artifact named $STUB_NAME exists already in this run"
  exit 1
}
mkdir -p "$dir/artifacts/$STUB_NAME"
cp "$STUB_PATH" "$dir/artifacts/$STUB_NAME/"
echo "uploaded $STUB_PATH as artifact $STUB_NAME"
{
  echo "artifact-id=1"
  echo "artifact-url=${GITHUB_SERVER_URL:-https://github.com}/${GITHUB_REPOSITORY:-local/repo}/actions/runs/${GITHUB_RUN_ID:-1}/artifacts/1"
} >>"$GITHUB_OUTPUT"
