#!/usr/bin/env bash
# A consortium from nothing, on one machine: the commands of
# docs/operations.md run in order, with eight parties on loopback.
# Usage: scripts/consortium-walkthrough.sh [WORKDIR]   (default: walkthrough/)
# SHROUD=path uses that binary instead of building a release one; PORT sets
# the coordinator's port (default 8443). tests/walkthrough.rs runs this.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
if [ -z "${SHROUD:-}" ]; then
  cargo build --release --quiet
  SHROUD="$ROOT/target/release/shroud"
fi
PORT="${PORT:-8443}"
W="${1:-walkthrough}"
rm -rf "$W"
mkdir -p "$W"/{keys,tls,data,reports}
cd "$W"

# 1. The coordinator's TLS certificate (self-signed, for trying out).
"$SHROUD" keygen --tls --out tls/coordinator --name localhost --name 127.0.0.1

# 2. The operator's identity: signs job start and abort.
"$SHROUD" keygen --out keys/operator.key

# 3. Each party makes its identity on its own machine and sends back the
#    printed roster line (never the key file).
for i in 0 1 2 3 4 5 6 7; do
  "$SHROUD" keygen --out "keys/party-$i.key" | grep '^identity_key' > "keys/party-$i.roster"
done

# 4. Each party's records (here: the digits data set dealt out).
"$SHROUD" data split --dataset "$ROOT/data/digits.csv" --parties 8 --out data | tee data/split.txt

# 5. The compliance reviewer writes the policy: the default policy with the
#    consortium's own roster lines and record counts.
awk -v dir="keys" -v data="data" '
  /^\[\[party\]\]/ { party++ }
  /^identity_key/ && party > 0 {
    getline line < (dir "/party-" (party - 1) ".roster"); print line; next }
  /^records/ && party > 0 {
    cmd = "tail -n +2 " data "/party-" (party - 1) ".csv | wc -l"; cmd | getline n; close(cmd)
    print "records = " n; next }
  /^# Demo identity/ { next }
  { print }
' "$ROOT/policies/default.toml" | sed 's/^id = "demo-digits"/id = "walkthrough"/' > consortium.toml
"$SHROUD" policy check consortium.toml | head -n 12

# 6. The coordinator.
"$SHROUD" serve --policy consortium.toml --db coordinator.db --listen "127.0.0.1:$PORT" \
  --tls-cert tls/coordinator.crt --tls-key tls/coordinator.key \
  --operator-public-key keys/operator.pub --out reports 2> serve.log &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true' EXIT
sleep 1

# 7. The parties, each next to its data.
for i in 0 1 2 3 4 5 6 7; do
  "$SHROUD" party --policy consortium.toml --id "$i" --key "keys/party-$i.key" \
    --data "data/party-$i.csv" --coordinator "https://127.0.0.1:$PORT" \
    --ca tls/coordinator.crt --once > "party-$i.log" 2>&1 &
done

# 8. A job: started by the operator, watched to the end.
"$SHROUD" job start --coordinator "https://127.0.0.1:$PORT" --key keys/operator.key \
  --ca tls/coordinator.crt --job digits-1 --rounds 20 --wait || true
wait $(jobs -p | grep -v "^$SERVE$") 2>/dev/null || true
cat party-0.log

# 9. What the compliance reviewer checks afterwards.
"$SHROUD" budget show --db coordinator.db
"$SHROUD" verify-log --db coordinator.db
"$SHROUD" report verify reports/digits-1/audit-report.json --db coordinator.db
