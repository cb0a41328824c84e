#!/usr/bin/env bash
# What capture costs the writer, in CPU instructions rather than seconds: this
# machine's speed swings by a third within minutes, instruction counts do not
# (±0.3 % between runs). Installs capture (agent/capture/install.ts) on
# public.items in a scratch database of the local server, copies that schema
# into a throwaway cluster, and runs N W1 statements (100 rows each) in a
# single-user backend under callgrind, with the capture triggers on and off,
# for N and for 2N statements: the difference is the steady cost per row
# (without it, the backend's start and loading plpgsql, about 10k and 7k
# instructions per row at N = 20, counted as if rows cost them).
#
#   bash bench/capture-instructions.sh [N=50] [ROWS=100]   (root; needs valgrind: apt-get install valgrind)
#
# ROWS is the rows per statement (each statement is its own transaction in a
# single-user backend): 100 is W1's, 1 a till's single-row sale, where the
# per-statement and per-transaction costs of capture dominate.
#
# Prints instructions per row for inserts and updates. Compare two versions of
# install.ts by running it on each (session 7's change measured 181M -> 126M
# for insert capture of 5,000 rows, before the script took differences).
set -euo pipefail
N=${1:-50}
R=${2:-100}
[[ $N =~ ^[1-9][0-9]*$ && $R =~ ^[1-9][0-9]*$ ]] || { echo "usage: capture-instructions.sh [N statements] [ROWS per statement]" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
URL=${BENCH_PG_URL:-postgresql://postgres@127.0.0.1:5432}
DB=bscapinstr_$$
WORK=$(mktemp -d /tmp/bscapinstr.XXXXXX)
chown postgres "$WORK"
cleanup() { psql "$URL/postgres" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }

psql "$URL/postgres" -qc "CREATE DATABASE $DB"
psql "$URL/$DB" -qc "CREATE TABLE public.items(id bigint PRIMARY KEY, sku text, qty int, price numeric(12,2), note text, updated_at timestamptz)"
(cd "$ROOT" && node --import tsx -e "
  const pg = (await import('pg')).default;
  const { introspect } = await import('./agent/capture/introspect.ts');
  const { installCapture } = await import('./agent/capture/install.ts');
  const c = new pg.Client({ connectionString: '$URL/$DB' });
  await c.connect();
  await installCapture(c, [await introspect(c, 'public.items')], 'instr', 'a');
  await c.end();")
pg_dump -s "$URL/$DB" | grep -v '^\\' > "$WORK/schema.sql"
su postgres -c "$PGBIN/initdb -D $WORK/data -A trust" >/dev/null
single() { su postgres -c "$PGBIN/postgres --single -D $WORK/data -j postgres" >"$WORK/out.log" 2>&1; ! grep -m3 ERROR "$WORK/out.log" >&2; }
single < "$WORK/schema.sql"

# statements KIND FIRST_ID COUNT: COUNT W1 statements of R rows, "-j" form (a blank line ends each)
statements() {
  for ((a = $2; a < $2 + $3 * R; a += R)); do
    if [ "$1" = insert ]; then
      echo "INSERT INTO public.items(id, sku, qty, price, note, updated_at) SELECT g, 'sku-' || g, (g % 1000)::int, ((g % 100000) / 100.0)::numeric(12,2), 'note ' || md5(g::text), clock_timestamp() FROM generate_series($a, $((a + R - 1))) g;"
    else
      echo "UPDATE public.items SET qty = qty + 1, price = price + 0.01, updated_at = clock_timestamp() WHERE id BETWEEN $a AND $((a + R - 1));"
    fi
    echo
  done
}
# instructions KIND FIRST_ID TRIGGERS(on|off) COUNT: callgrind's total for a backend that runs COUNT statements
instructions() {
  printf 'ALTER TABLE public.items %s TRIGGER USER;\n\n' "$([ "$3" = on ] && echo ENABLE || echo DISABLE)" | single
  [ "$1" = update ] && { statements insert "$2" "$4" | single; }
  statements "$1" "$2" "$4" > "$WORK/run.sql"
  su postgres -c "valgrind --tool=callgrind --callgrind-out-file=$WORK/cg.out $PGBIN/postgres --single -D $WORK/data -j postgres" < "$WORK/run.sql" > "$WORK/out.log" 2>&1
  if grep -m3 ERROR "$WORK/out.log" >&2; then exit 1; fi
  awk '/^summary/ { print $2 }' "$WORK/cg.out"
}
# A backend's start, loading plpgsql and planning the trigger's statements
# cost the same for N statements as for 2N: the difference of the two runs
# is what N more statements cost, per row, as in a long-running session.
rows=$((N * R))
printf '| statement (%d rows each) | per row without capture | with capture | capture per row | (one backend, %d statements: without / with capture) |\n|---|---|---|---|---|\n' "$R" "$N"
base=1000000
for kind in insert update; do
  off1=$(instructions $kind $base off "$N"); base=$((base + 1000000))
  off2=$(instructions $kind $base off $((2 * N))); base=$((base + 1000000))
  on1=$(instructions $kind $base on "$N"); base=$((base + 1000000))
  on2=$(instructions $kind $base on $((2 * N))); base=$((base + 1000000))
  off=$(( (off2 - off1) / rows )); on=$(( (on2 - on1) / rows ))
  printf '| %s | %s | %s | %s | %s / %s |\n' "$kind" "$off" "$on" "$((on - off))" "$off1" "$on1"
done
