#!/bin/bash
# Wall time of the whole demo (`dvc repro` on the bundled demo data), stage by stage, at a commit:
#   bench/demo_time.sh <empty folder> [commit]      (default commit: HEAD)
# A fresh clone at the commit, the demo images generated, the ImageNet weights copied from
# ../shared/weights; the project's .venv runs it. Each line: a stage's seconds (the time to the next
# stage's "Running stage" line). Run two commits one after the other on an idle machine to compare.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$1; commit=${2:-HEAD}
shared=${SHARED_DIR:-$repo/../shared}
rm -rf "$out" && git clone -q "$repo" "$out" && cd "$out" && git checkout -q "$(cd "$repo" && git rev-parse "$commit")"
mkdir -p .keras/models && cp "$shared"/weights/keras/models/*.h5 .keras/models/
export PATH=$repo/.venv/bin:$PATH KERAS_HOME=$PWD/.keras STACK_DIR=$PWD/.stack-none
[ -d "$repo/.vendor/datadocs" ] && export DATADOCS_ASSETS=$repo/.vendor/datadocs
python -m pipeline.demo --out data/raw > /dev/null && dvc add -q data/raw
start=$(date +%s.%N); last=$start; name=""
while IFS= read -r line; do
  case "$line" in "Running stage"*)
    now=$(date +%s.%N); [ -n "$name" ] && printf "%6.1f s  %s\n" "$(echo "$now - $last" | bc)" "$name"
    name=${line#Running stage }; last=$now;;
  esac
done < <(dvc repro 2>&1)
end=$(date +%s.%N)
printf "%6.1f s  %s\n%6.1f s  total\n" "$(echo "$end - $last" | bc)" "$name" "$(echo "$end - $start" | bc)"
