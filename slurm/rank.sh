#!/usr/bin/env bash
# One rank under torchrun: `python <args>` with stdout and stderr in $RANK_LOG_DIR/rank-$RANK.log
# (appended to, so a requeued job's attempts follow each other in the same file).
set -euo pipefail
log=$RANK_LOG_DIR/rank-$RANK.log
echo "== $(date -Is) rank $RANK/$WORLD_SIZE (local $LOCAL_RANK) on $(hostname) ${SLURMD_NODENAME:-}," \
    "attempt ${SLURM_RESTART_COUNT:-0}" >>"$log"
exec "$PYTHON" "$@" >>"$log" 2>&1
