#!/usr/bin/env bash
# test_container.sh - the Dockerfile's runtime contract, checked without Docker (CI has no
# daemon): the final stage's ENV, ENTRYPOINT + CMD and HEALTHCHECK, read from the Dockerfile
# itself, run against the built binary as an unprivileged user (uid 65534 when run as root):
#   - deploy/runtime-packages.sh derives an installed package for every library quiver links
#     (the list the image's runtime stage installs);
#   - `quiver serve` with the image's environment binds 0.0.0.0, the HEALTHCHECK command
#     succeeds once loaded, a demo adapter preloaded from its image path answers, the store
#     is created under QUIVER_ADAPTER_STORE, a kept response is a file under
#     QUIVER_RESPONSES_DIR, and SIGTERM (docker stop) drains and exits 0;
#   - in real cgroups (created when this test may write the cgroup tree, as root in CI; else
#     that part is skipped and says so): under a one-CPU quota the default thread count is 1;
#     under a 768 MiB memory limit the default budgets get a start-up warning, and budgets that
#     fit are reported as within the limit.
# Paths of the image (/opt/quiver, /var/lib/quiver) are mapped into a temp dir. Skips (77)
# when the model has not been fetched.
set -euo pipefail
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model

tmp=$(mktemp -d /tmp/quiver-container.XXXXXX)
chmod 755 "$tmp"
pid=
cg=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    if [[ -n $cg ]]; then rmdir "$cg" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# 1. the runtime packages
pkgs=$(bash "$root/deploy/runtime-packages.sh" "$quiver")
for lib in libcjson libmicrohttpd libuv libpcre2-8 libutf8proc; do
    grep -q "^$lib" <<<"$pkgs" || { echo "FAIL: no package for $lib in: $pkgs"; exit 1; }
done
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" | grep -q "install ok installed" ||
        { echo "FAIL: $p is not an installed package"; exit 1; }
done
echo "runtime packages: $(echo $pkgs)"

# 2. the final stage's process configuration, from the Dockerfile
eval "$(python3 - "$root/Dockerfile" <<'EOF'
import json, re, shlex, sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
stage = re.split(r"(?m)^FROM ", text)[-1]
env, health, cmd, entry = {}, None, None, None
for line in stage.splitlines():
    word, _, rest = line.strip().partition(" ")
    if word == "ENV":
        for tok in shlex.split(rest):
            k, _, v = tok.partition("=")
            env[k] = v
    elif word == "HEALTHCHECK":
        health = rest.split(" CMD ", 1)[1].strip()
    elif word == "CMD":
        cmd = json.loads(rest)
    elif word == "ENTRYPOINT":
        entry = json.loads(rest)
for k, v in env.items():
    print(f"img_env_{k}={shlex.quote(v)}")
print(f"img_health={shlex.quote(health)}")
print(f"img_entry={shlex.quote(entry[0])}")
print(f"img_cmd=({' '.join(shlex.quote(c) for c in cmd)})")
print(f"img_env_names=({' '.join(env)})")
EOF
)"
[[ $img_entry == /usr/local/bin/quiver && ${img_cmd[0]} == serve ]] ||
    { echo "FAIL: the image does not start 'quiver serve' (${img_entry} ${img_cmd[*]})"; exit 1; }
[[ ${img_env_QUIVER_HOST:-} == 0.0.0.0 ]] || { echo "FAIL: the image does not bind 0.0.0.0"; exit 1; }

# the image's paths, mapped: QUIVER_HOME holds models/ and demo-adapters/
home=$tmp/opt/quiver
mkdir -p "$home/models" "$tmp/var/lib/quiver"
cp "$model" "$home/models/" # a copy: the fetched one may sit in a home the user cannot read
cp -r "$root/deploy/demo-adapters" "$home/demo-adapters"
user=()
if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null; then
    chown -R 65534:65534 "$tmp/var/lib/quiver"
    chmod -R a+rX "$home"
    user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
run_env=(env -i PATH=/usr/bin:/bin)
for k in "${img_env_names[@]}"; do
    v_name=img_env_$k
    v=${!v_name}
    case $k in
    QUIVER_HOME) v=$home ;;
    QUIVER_ADAPTER_STORE | QUIVER_RESPONSES_DIR) v=$tmp${v} ;;
    QUIVER_PORT) v=0 ;;
    esac
    run_env+=("$k=$v")
done
echo "image environment (mapped): ${run_env[*]:2}${user:+ as uid 65534}"

start() { # $1 = log; the image's command line, with a preloaded demo adapter
    : >"$1"
    "${run_env[@]}" "${user[@]}" "$quiver" "${img_cmd[@]}" \
        --preload "pirate=$home/demo-adapters/pirate" 2>"$1" &
    pid=$!
    port=
    for _ in $(seq 1 300); do
        port=$(sed -n 's/.*listening on http:\/\/0\.0\.0\.0:\([0-9]*\).*/\1/p' "$1" 2>/dev/null || true)
        [[ -n $port ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    [[ -n $port ]] || { echo "FAIL: the server did not listen on 0.0.0.0"; cat "$1"; exit 1; }
}

start "$tmp/server.log"
[[ ${#user[@]} -eq 0 ]] || [[ $(stat -c %u /proc/$pid) == 65534 ]] ||
    { echo "FAIL: the server does not run as uid 65534"; exit 1; }
ok=0
for _ in $(seq 1 50); do
    if QUIVER_PORT=$port sh -c "$img_health" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
done
[[ $ok == 1 ]] || { echo "FAIL: the HEALTHCHECK command ($img_health) never succeeded"; exit 1; }
echo "HEALTHCHECK ok on port $port"
body='{"model":"pirate","temperature":0,"max_tokens":8,"messages":[{"role":"user","content":"Hi"}]}'
out=$(curl -fsS "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")
grep -q '"model":"pirate"' <<<"$out" || { echo "FAIL: chat on the preloaded adapter: $out"; exit 1; }
[[ -d $tmp/var/lib/quiver/adapters/objects ]] || { echo "FAIL: no adapter store on the volume"; exit 1; }
out=$(curl -fsS "http://127.0.0.1:$port/v1/responses" -H 'Content-Type: application/json' \
    -d '{"input":"Hi","max_output_tokens":4}')
rid=$(grep -o '"id":"resp_[0-9a-f]*"' <<<"$out" | head -1 | cut -d'"' -f4)
[[ -n $rid && -f $tmp/var/lib/quiver/responses/$rid ]] ||
    { echo "FAIL: the kept response ($rid) is not a file on the volume: $out"; exit 1; }
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
[[ $rc -eq 0 ]] || { echo "FAIL: SIGTERM: exit status $rc"; tail "$tmp/server.log"; exit 1; }
grep -q "drained" "$tmp/server.log" || { echo "FAIL: no drain on SIGTERM"; exit 1; }
# the HEALTHCHECK fails once the server is gone
if QUIVER_PORT=$port sh -c "$img_health" >/dev/null 2>&1; then
    echo "FAIL: the HEALTHCHECK passes with no server"
    exit 1
fi
echo "SIGTERM: drained, exit 0"

# 3. cgroup limits, in a real cgroup when this test may make one (root in CI): a one-CPU quota
# sets the default thread count; a memory limit below the budgets gets a start-up warning
cgdir() { # $1 = controller: the v1 mount of that controller, or the v2 root with it enabled
    if [[ -w /sys/fs/cgroup/$1 ]] && [[ -f /sys/fs/cgroup/$1/cgroup.procs ]]; then
        echo "/sys/fs/cgroup/$1"
    elif [[ -f /sys/fs/cgroup/cgroup.controllers ]] && [[ -w /sys/fs/cgroup ]] &&
        grep -qw "$1" /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
        echo /sys/fs/cgroup
    fi
}
# $1 = controller, $2 = v2 file, $3 = v1 file, $4 = limit, $5 = log, then serve arguments.
# Runs `quiver serve` in a new cgroup with that limit until it listens (or exits); returns 2
# when no cgroup can be made here.
serve_in_cgroup() {
    local ctl=$1 f2=$2 f1=$3 limit=$4 log=$5 base
    shift 5
    base=$(cgdir "$ctl")
    [[ -n $base ]] && mkdir "$base/qv-test-$$-$ctl" 2>/dev/null || return 2
    cg=$base/qv-test-$$-$ctl
    if [[ -f $cg/$f2 ]]; then echo "$limit" >"$cg/$f2"; else echo "$limit" >"$cg/$f1"; fi
    sh -c "{ echo \$\$ > '$cg/cgroup.procs'; } 2>/dev/null || { echo cgroup-write-failed >&2; exit 0; }; exec \"\$@\"" \
        sh "$quiver" serve --model "$model" --port 0 --adapter-store "$tmp/store-$ctl" "$@" 2>"$log" &
    pid=$!
    for _ in $(seq 1 300); do
        grep -qs 'listening on' "$log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || true
    pid=
    rmdir "$cg" 2>/dev/null || true
    cg=
    if grep -q cgroup-write-failed "$log"; then return 2; fi
    grep -q 'listening on' "$log" || { echo "FAIL: no start in the $ctl cgroup"; cat "$log"; exit 1; }
}

rc=0
serve_in_cgroup cpu cpu.max cpu.cfs_quota_us 100000 "$tmp/quota.log" || rc=$?
if [[ $rc -eq 2 ]]; then
    echo "one-CPU quota: skipped (no cgroup can be made here; tests/engine/test_cgroup.c covers the parsing)"
else
    line=$(grep -m1 -o 'threads [0-9]* ([^)]*)' "$tmp/quota.log" || true)
    [[ $line == "threads 1 ("*"cgroup CPU limit 1.00;"*" kernels)" ]] ||
        { echo "FAIL: under a one-CPU quota the start-up line says '$line'"; exit 1; }
    echo "one-CPU quota: $line"
fi

rc=0
serve_in_cgroup memory memory.max memory.limit_in_bytes $((768 << 20)) "$tmp/mem1.log" || rc=$?
if [[ $rc -eq 2 ]]; then
    echo "memory limit: skipped (no cgroup can be made here; tests/engine/test_cgroup.c covers the parsing)"
else
    # the defaults (98 MiB weights + 256 MiB kv + 1024 MiB adapter host) do not fit 768 MiB
    grep -q 'warning: the host budgets .* exceed the cgroup memory limit of 768 MiB' "$tmp/mem1.log" ||
        { echo "FAIL: no warning with the budgets over a 768 MiB limit"; grep 'quiver serve' "$tmp/mem1.log"; exit 1; }
    serve_in_cgroup memory memory.max memory.limit_in_bytes $((768 << 20)) "$tmp/mem2.log" \
        --adapter-host-mb 128 || { echo "FAIL: second memory cgroup"; exit 1; }
    grep -q 'memory: host budgets [0-9]* MiB within the cgroup limit of 768 MiB' "$tmp/mem2.log" ||
        { echo "FAIL: budgets that fit are not reported as such"; grep 'quiver serve' "$tmp/mem2.log"; exit 1; }
    ! grep -q 'warning: the host budgets' "$tmp/mem2.log" || { echo "FAIL: a warning though the budgets fit"; exit 1; }
    echo "memory limit: $(grep -o 'warning: the host budgets ([^)]*)' "$tmp/mem1.log"); with --adapter-host-mb 128: $(grep -o 'host budgets [0-9]* MiB within [^\n]*' "$tmp/mem2.log")"
fi
echo PASS
