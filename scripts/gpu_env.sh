# Sourced by the GPU scripts: run from the source tree on a node that may be air-gapped.
# Installs the wheelhouse from scripts/wheelhouse.sh when .whl/ is present; keeps every cache local.
if [ -d .whl ]; then  # once per machine: scripts started side by side source this too
  if [ ! -e /tmp/site/.wheelhouse-installed ]; then
    python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    touch /tmp/site/.wheelhouse-installed
  fi
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
export ADAGC_REPRO_CACHE=${ADAGC_REPRO_CACHE:-/tmp/adagc-cache}
cli="python3 -m adagc_repro.cli"

# The working tree's content as a git tree hash, and HEAD: on a machine that received a copy of the
# files with older git metadata, HEAD lags, while `git log --format='%h %T'` run at home finds the
# commit whose tree matches (none if the copy held uncommitted changes).
source_tree() {
  local index; index=$(mktemp -u)
  if GIT_INDEX_FILE=$index git add -A . 2>/dev/null; then
    echo "tree $(GIT_INDEX_FILE=$index git write-tree) (HEAD $(git rev-parse --short HEAD))"
  fi
  rm -f "$index"
}
