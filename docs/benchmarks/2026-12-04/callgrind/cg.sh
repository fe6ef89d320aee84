#!/usr/bin/env bash
# cg.sh SERVER_BIN BENCH_BIN DURATION OUT: total server instructions (callgrind) for one run
set -u
BIN=$1; BENCH=$2; DUR=$3; OUT=$4
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file=$OUT.cg $BIN serve --listen 127.0.0.1:$PORT --jwt-secret s3 --publish-key k3 > $OUT.srv.log 2>&1 &
VPID=$!
for i in $(seq 300); do grep -q "listening on" $OUT.srv.log && break; sleep 0.2; done
$BENCH run --target cortex --addr 127.0.0.1:$PORT --secret s3 --publish-key k3 --conns 1000 --shape org --rate 20 --duration $DUR --workers 1 --subscriptions one > $OUT.bench.log 2>&1
echo "bench rc=$?"
kill -TERM $VPID; wait $VPID
grep -E "^(summary|totals):" $OUT.cg
grep -E "delivery|lost" $OUT.bench.log | head -3
