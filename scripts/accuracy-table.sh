#!/usr/bin/env bash
# Test accuracy of central training, FedAvg without DP and FedAvg with
# record-level DP at several budgets, on digits and MNIST-1D, for three
# degrees of label skew. Prints one Markdown table row per data set and α.
# A run whose release the audit gate blocks (every no-DP run is blocked)
# still reports its accuracy.
# Usage: scripts/accuracy-table.sh [path/to/shroud]   (default: target/release/shroud)
set -euo pipefail
SHROUD=${1:-target/release/shroud}
OUT=$(mktemp -d)
acc() {
    { "$SHROUD" demo "$@" --json --out "$OUT" 2>/dev/null || true; } |
        python3 -c 'import json,sys; print("%.1f" % (100 * json.load(sys.stdin)["accuracy"]))'
}
echo "| data set | α | central | FedAvg, no DP | ε = 1 | ε = 2 | ε = 4 | ε = 8 |"
echo "|---|---|---|---|---|---|---|---|"
for ds in digits mnist1d; do
    for alpha in 0.1 0.5 10; do
        common=(--dataset "$ds" --alpha "$alpha" --dropout 0 --seed 1)
        row="| $ds | $alpha | $(acc "${common[@]}" --central) | $(acc "${common[@]}" --no-dp --allow-no-dp)"
        for eps in 1 2 4 8; do
            row+=" | $(acc "${common[@]}" --epsilon "$eps")"
        done
        echo "$row |"
    done
done
