#!/usr/bin/env bash
# Test accuracy of central training, FedAvg without DP and FedAvg with
# record-level DP at several budgets, on digits and MNIST-1D, for three
# degrees of label skew. Prints one Markdown table row per data set and α.
# Usage: scripts/accuracy-table.sh [path/to/shroud]   (default: target/release/shroud)
set -euo pipefail
SHROUD=${1:-target/release/shroud}
OUT=$(mktemp -d)
acc() { python3 -c 'import json,sys; print("%.1f" % (100 * json.load(sys.stdin)["accuracy"]))'; }
echo "| data set | α | central | FedAvg, no DP | ε = 1 | ε = 2 | ε = 4 | ε = 8 |"
echo "|---|---|---|---|---|---|---|---|"
for ds in digits mnist1d; do
    central=$("$SHROUD" demo --dataset "$ds" --central --json | acc)
    for alpha in 0.1 0.5 10; do
        common=(--dataset "$ds" --alpha "$alpha" --dropout 0 --seed 1 --json --out "$OUT")
        row="| $ds | $alpha | $central | $("$SHROUD" demo "${common[@]}" --no-dp --allow-no-dp | acc)"
        for eps in 1 2 4 8; do
            row+=" | $("$SHROUD" demo "${common[@]}" --epsilon "$eps" | acc)"
        done
        echo "$row |"
    done
done
