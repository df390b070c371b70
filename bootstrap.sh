#!/usr/bin/env bash
# One command sets up this host and starts the blog; run as root on Debian 12 or Ubuntu 24.04.
#
#   ./bootstrap.sh [--repo URL_OR_PATH] [--port PORT] [--notify-url URL [--notify-secret KEY]]
#                  [--domain NAME ... --email ADDRESS [--acme-directory URL] [--acme-ca-bundle FILE]]
#                                                       set up (again: changes only what is not right)
#   ./bootstrap.sh teardown [--purge]                   remove what it set up (--purge: the site repositories too)
#   ./bootstrap.sh site add NAME --domain DOMAIN [--domain ...] [--repo URL_OR_PATH] [--email ADDRESS]
#                           [--memory MB] [--vmhz MHZ]  one more site on this host (the blog is the site blog)
#   ./bootstrap.sh site remove NAME [--purge]           remove a site (--purge: its repository and volumes too)
#   ./bootstrap.sh site list [--json]                   the sites, their repositories, live commits and states
#   ./bootstrap.sh site key add SITE NAME [KEYFILE|-]   let NAME's SSH key git push to SITE (git@HOST:SITE)
#   ./bootstrap.sh site key list [SITE] · site key remove SITE NAME
#
# Installs the host packages and the agent, builds the blog image, creates a local git remote seeded with
# site_template/ (default) and starts pequod-agent under systemd or, without systemd, as a supervised
# daemon; then waits until the blog answers through the frontend.
set -euo pipefail
CALLER=$PWD  # `site add --repo PATH` names a path relative to where the command was given
cd "$(dirname "$(readlink -f "$0")")"
SOURCE=$PWD

PREFIX=${PEQUOD_PREFIX:-/opt/pequod}              # the agent's virtual environment
ETC=${PEQUOD_ETC:-/etc/pequod}                    # the bootstrap YAML
STATE=${PEQUOD_STATE:-/var/lib/pequod-agent}      # the agent's state
SITE_REPO_DIR=${PEQUOD_SITE_REPO:-/srv/pequod/site.git}
LOG=${PEQUOD_LOG:-/var/log/pequod-agent.log}
PID_FILE=${PEQUOD_PID_FILE:-/run/pequod-agent.pid}
IMAGE=srcco-de:1
UNIT=/etc/systemd/system/pequod-agent.service
YAML=$ETC/pequod-bootstrap.yaml
AGENT=$PREFIX/venv/bin/pequod-agent

repo=""
port=80
notify_url=""
notify_secret=""
domains=()
email=""
acme_directory=""
acme_ca_bundle=""
purge=0
command=setup

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

# -- site add|remove|list: container/sites.py, with the installed agent's Python (docs/sites.md) ------------
if [ "${1:-}" = site ]; then
    shift
    if [ ! -x "$PREFIX/venv/bin/python" ] || [ ! -f "$YAML" ]; then
        echo "bootstrap.sh site: this host is not set up yet ($PREFIX/venv or $YAML is missing): run ./bootstrap.sh first" >&2
        exit 1
    fi
    case " $* " in
        *" -h "*|*" --help "*) ;;
        *) [ "$(id -u)" = 0 ] || { echo "bootstrap.sh site: run as root (sudo ./bootstrap.sh site ...)" >&2; exit 1; } ;;
    esac
    # The modules of this clone (-P: not those of the caller's directory), the venv's libraries.
    cd "$CALLER"
    PYTHONPATH="$SOURCE" exec "$PREFIX/venv/bin/python" -P -m container.sites --yaml "$YAML" --state-dir "$STATE" \
        --repos "$(dirname "$SITE_REPO_DIR")" --template "$SOURCE/site_template" --manifest "$SOURCE/pequod.xml" \
        --image "$IMAGE" --log "$LOG" --pid-file "$PID_FILE" --keys "$ETC/push-keys.yaml" "$@"
fi

while [ $# -gt 0 ]; do
    case $1 in
        teardown) command=teardown ;;
        --purge) purge=1 ;;
        --repo) repo=${2:?--repo needs a URL or a path}; shift ;;
        --port) port=${2:?--port needs a number}; shift ;;
        --notify-url) notify_url=${2:?--notify-url needs a URL}; shift ;;
        --notify-secret) notify_secret=${2:?--notify-secret needs a value}; shift ;;
        --domain) domains+=("${2:?--domain needs a host name}"); shift ;;
        --email) email=${2:?--email needs an address}; shift ;;
        --acme-directory) acme_directory=${2:?--acme-directory needs a URL}; shift ;;
        --acme-ca-bundle) acme_ca_bundle=$(readlink -f "${2:?--acme-ca-bundle needs a file}"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "bootstrap.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

# -- steps with their duration; a failing step says which and what to do ----------------------------
current="" hint="" started=0
step() {
    current=$1 hint=${2:-}
    started=$(date +%s.%N)
    printf '\n==> %s\n' "$current"
}
on_error() {
    local status=$?
    printf '\nbootstrap.sh: step failed: %s (exit status %s)\n' "$current" "$status" >&2
    [ -n "$hint" ] && printf '  what to do: %s\n' "$hint" >&2
    exit "$status"
}
trap on_error ERR
fail() { printf 'bootstrap.sh: %s\n' "$*" >&2; exit 1; }
done_step() {
    local now
    now=$(date +%s.%N)
    printf '    done in %s s\n' "$(awk -v a="$started" -v b="$now" 'BEGIN { printf "%.1f", b - a }')"
}

has_systemd() { [ -d /run/systemd/system ]; }

supervisor_pid() {
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--supervise" && echo "$pid"
}

stop_agent() {
    if has_systemd && [ -f "$UNIT" ]; then
        systemctl disable --now pequod-agent.service >/dev/null 2>&1 || true
    fi
    local pid
    if pid=$(supervisor_pid); then
        kill -TERM "$pid"
        for _ in $(seq 1 150); do  # up to 30 s; a zombie counts as gone
            grep -qs '^State:[[:space:]]*[^Z]' "/proc/$pid/status" || break
            sleep 0.2
        done
        echo "    stopped the agent (supervisor pid $pid)"
    fi
}

# -- teardown ------------------------------------------------------------------------------------------
if [ "$command" = teardown ]; then
    [ "$(id -u)" = 0 ] || fail "run as root"
    step "stopping the agent"
    stop_agent
    done_step
    step "removing instances, NAT64, frontend, network and firewall rules"
    if [ -x "$AGENT" ]; then
        "$AGENT" --teardown --state-dir "$STATE" $([ "$purge" = 1 ] && echo --purge)
    fi
    done_step
    step "removing the unit, configuration and state"
    if [ -f "$UNIT" ]; then rm -f "$UNIT"; has_systemd && systemctl daemon-reload; fi
    # The applications' volumes (their releases) stay unless --purge; never cross into a mounted one.
    if [ -x "$PREFIX/venv/bin/python" ]; then "$PREFIX/venv/bin/python" -m container.push_keys teardown --yaml "$YAML"; fi
    rm -rf --one-file-system "$ETC" "$PID_FILE"
    if [ -d "$STATE" ]; then
        find "$STATE" -mindepth 1 -maxdepth 1 ! -name volumes -exec rm -rf --one-file-system {} +
    fi
    site_repos=()  # the repositories `site add` made (git config pequod.site names the site)
    for site_repo in "$(dirname "$SITE_REPO_DIR")"/*.git; do
        if [ -n "$(git --git-dir="$site_repo" config --get pequod.site 2>/dev/null)" ]; then site_repos+=("$site_repo"); fi
    done
    if [ "$purge" = 1 ]; then
        rm -rf --one-file-system "$STATE"
        rm -rf "$SITE_REPO_DIR" "$PREFIX" "${site_repos[@]}"
        [ ${#site_repos[@]} = 0 ] || echo "    removed the sites' repositories ${site_repos[*]}"
        rmdir --ignore-fail-on-non-empty "$(dirname "$SITE_REPO_DIR")" 2>/dev/null || true
        echo "    removed $SITE_REPO_DIR and $PREFIX"
    else
        [ -d "$SITE_REPO_DIR" ] && echo "    kept the site repository $SITE_REPO_DIR (--purge removes it)"
        [ ${#site_repos[@]} = 0 ] || echo "    kept the sites' repositories ${site_repos[*]} (--purge removes them)"
        [ -d "$STATE/volumes" ] && echo "    kept the sites' volumes (their releases) in $STATE/volumes (--purge removes them)"
    fi
    done_step
    echo; echo "pequod is removed from this host."
    exit 0
fi

# -- setup ---------------------------------------------------------------------------------------------
case $port in ''|*[!0-9]*) fail "--port: '$port' is not a port number" ;; esac
[ ${#domains[@]} = 0 ] || [ -n "$email" ] || fail "--domain needs --email (the ACME CA's contact for the account)"
domain_args=()
for domain in "${domains[@]}"; do domain_args+=(--domain "$domain"); done
[ "$port" -ge 1 ] && [ "$port" -le 65535 ] || fail "--port: $port is out of range (1-65535)"

step "checking the host" "run as root on Debian 12 or Ubuntu 24.04 with IPv6 enabled"
[ "$(id -u)" = 0 ] || fail "run as root (sudo ./bootstrap.sh): it installs packages and sets up networking"
. /etc/os-release 2>/dev/null || true
case "${ID:-} ${ID_LIKE:-}" in
    *debian*|*ubuntu*) echo "    ${PRETTY_NAME:-Debian-like}" ;;
    *) fail "this is ${PRETTY_NAME:-an unknown system}; bootstrap.sh supports Debian 12 and Ubuntu 24.04" ;;
esac
[ "$(cat /proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null || echo 1)" = 0 ] \
    || fail "IPv6 is disabled on this host (sysctl net.ipv6.conf.all.disable_ipv6=0 enables it); the instances are IPv6-only"
[ -c /dev/net/tun ] || fail "/dev/net/tun is missing: NAT64 needs the tun driver (modprobe tun)"
done_step

step "installing host packages" "apt-get must reach a Debian/Ubuntu mirror; see /etc/apt/sources.list*"
"$SOURCE/scripts/ensure-packages.sh" docker.io haproxy tayga iptables iproute2 e2fsprogs mount git python3 python3-venv \
    ca-certificates debootstrap debian-archive-keyring $([ ${#domains[@]} = 0 ] || echo lego)
done_step

step "installing pequod-agent into $PREFIX/venv" "pip must reach PyPI (or set PIP_INDEX_URL)"
stamp=$(cd "$SOURCE" && find pyproject.toml serve.py run.sh pipeline container -type f -not -name '*.pyc' \
        -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
upgraded=0  # the agent or the image changed: a running agent is restarted to use them
if [ -x "$AGENT" ] && [ "$(cat "$PREFIX/installed" 2>/dev/null)" = "$stamp" ]; then
    echo "    up to date"
else
    [ -x "$AGENT" ] && upgraded=1
    [ -x "$PREFIX/venv/bin/python" ] || python3 -m venv "$PREFIX/venv"
    "$PREFIX/venv/bin/python" -m pip install -q --upgrade pip
    # The agent's extra only: Nikola, CherryPy and GitPython live in the image (docs/deployables.md).
    "$PREFIX/venv/bin/python" -m pip install -q --upgrade "$SOURCE[agent]"
    echo "$stamp" > "$PREFIX/installed"
    echo "    installed $("$PREFIX/venv/bin/python" -m pip show pequod 2>/dev/null | sed -n 's/^Version: //p')"
fi
done_step

step "Docker engine and the blog image $IMAGE" "see /var/log/pequod-dockerd.log if the engine does not answer"
image_id() { docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true; }
before=$(image_id)
"$AGENT" --build-image "$IMAGE" --context "$SOURCE"
[ -n "$before" ] && [ "$before" != "$(image_id)" ] && upgraded=1
done_step

if [ -z "$repo" ]; then
    step "the site repository $SITE_REPO_DIR" "git must be installed; the directory must be writable"
    if git --git-dir="$SITE_REPO_DIR" rev-parse --verify -q refs/heads/main >/dev/null 2>&1; then
        echo "    present ($(git --git-dir="$SITE_REPO_DIR" rev-list --count main) commits on main): kept as it is"
    else
        mkdir -p "$SITE_REPO_DIR"
        git init -q --bare -b main "$SITE_REPO_DIR"
        seed=$(mktemp -d)
        cp -r "$SOURCE/site_template/." "$seed/"
        git -C "$seed" init -q -b main
        git -C "$seed" add -A
        git -C "$seed" -c user.name=pequod -c user.email=pequod@localhost commit -q -m "The bundled blog"
        git -C "$seed" push -q "$SITE_REPO_DIR" main
        rm -rf "$seed"
        echo "    created, seeded with site_template/"
    fi
    chmod -R a+rX "$SITE_REPO_DIR"  # the instance reads it as an unprivileged user
    site_url="file://$SITE_REPO_DIR"
    mount=$SITE_REPO_DIR
    done_step
elif [ -d "$repo" ]; then
    repo=$(readlink -f "$repo")
    git --git-dir="$repo" rev-parse --git-dir >/dev/null 2>&1 || git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 \
        || fail "--repo $repo is a directory but not a git repository"
    site_url="file://$repo"
    mount=$repo
else
    case $repo in
        https://github.com/*) ;;
        *) fail "--repo $repo: use a local git repository path, or an https://github.com/… URL (the blog image declares github.com:443 as its only external service)" ;;
    esac
    site_url=$repo
    mount=""
fi

step "the bootstrap YAML $YAML" "fix the file, or move it away to start from a fresh one"
mkdir -p "$ETC"
# Sets the repository, its mount and the port; keeps whatever else the file holds (e.g. WEBHOOK_SECRET).
"$PREFIX/venv/bin/python" -m container.host_settings "$YAML" --site-repo "$site_url" --port "$port" \
    ${mount:+--mount "$mount"} ${notify_url:+--notify-url "$notify_url"} \
    ${notify_secret:+--notify-secret "$notify_secret"} "${domain_args[@]}" ${email:+--email "$email"} \
    ${acme_directory:+--acme-directory "$acme_directory"} ${acme_ca_bundle:+--acme-ca-bundle "$acme_ca_bundle"} \
    | sed 's/^/    /'
done_step

step "the user ${PEQUOD_GIT_USER:-git} for pushes over SSH" "userdel it, or set PEQUOD_GIT_USER to another name"
"$PREFIX/venv/bin/python" -m container.push_keys setup --keys "$ETC/push-keys.yaml" --yaml "$YAML"
done_step

agent_args=(--bootstrap "$IMAGE" "$YAML" --state-dir "$STATE")
if has_systemd; then
    step "the agent as systemd unit pequod-agent.service" "journalctl -u pequod-agent shows why it does not run"
    unit="[Unit]
Description=pequod-agent: the blog's instance, NAT64 and frontend
After=network-online.target docker.service
Wants=network-online.target docker.service

[Service]
ExecStart=$AGENT ${agent_args[*]}
Restart=always
RestartSec=2
KillMode=process

[Install]
WantedBy=multi-user.target"
    if [ "$(cat "$UNIT" 2>/dev/null)" != "$unit" ]; then
        printf '%s\n' "$unit" > "$UNIT"
        systemctl daemon-reload
        systemctl enable -q pequod-agent.service
        systemctl restart pequod-agent.service
        echo "    installed and started"
    elif [ "$upgraded" = 1 ]; then
        systemctl restart pequod-agent.service
        echo "    restarted on the new version (instances are re-adopted or replaced without downtime)"
    elif ! systemctl is-active -q pequod-agent.service; then
        systemctl enable -q --now pequod-agent.service
        echo "    started"
    else
        echo "    running"
    fi
    logs="journalctl -u pequod-agent"
else
    step "the agent as a supervised daemon (no systemd here)" "see $LOG"
    if [ "$upgraded" = 1 ] && supervisor_pid >/dev/null; then
        stop_agent
        echo "    restarting on the new version (instances are re-adopted or replaced without downtime)"
    fi
    if pid=$(supervisor_pid); then
        echo "    running (supervisor pid $pid)"
    else
        mkdir -p "$(dirname "$LOG")" "$(dirname "$PID_FILE")"
        setsid "$AGENT" --supervise --pid-file "$PID_FILE" "${agent_args[@]}" >> "$LOG" 2>&1 < /dev/null &
        for _ in $(seq 1 50); do supervisor_pid >/dev/null && break; sleep 0.1; done
        pid=$(supervisor_pid) || fail "the agent did not start; see $LOG"
        echo "    started (supervisor pid $pid, log $LOG)"
    fi
    logs="tail -f $LOG"
fi
done_step

url="http://localhost$([ "$port" = 80 ] || echo ":$port")/"
step "waiting for the blog at $url" "the agent's log ($logs) says what it waits for"
python3 - "$port" "$LOG" <<'EOF'
import sys, time, urllib.request, urllib.error
port, log = int(sys.argv[1]), sys.argv[2]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # with HTTPS on, plain HTTP answers 301: the frontend is up


opener = urllib.request.build_opener(NoRedirect)
deadline, last, shown = time.time() + 600, "", time.time()
while time.time() < deadline:
    try:
        with opener.open(f"http://[::1]:{port}/", timeout=5) as response:
            if response.status == 200:
                sys.exit(0)
    except urllib.error.HTTPError as exc:
        if exc.code == 301 and exc.headers.get("Location", "").startswith("https://"):
            sys.exit(0)
        last = f"HTTP {exc.code}"
    except OSError as exc:
        last = str(getattr(exc, "reason", exc))
    if time.time() - shown >= 10:
        shown = time.time()
        try:
            tail = open(log, errors="replace").read().strip().splitlines()[-1][:160]
        except (OSError, IndexError):
            tail = ""
        print(f"    still waiting ({last}) {tail}", flush=True)
    time.sleep(0.5)
print(f"    no answer within 10 minutes (last: {last})", file=sys.stderr)
sys.exit(1)
EOF
done_step

if [ ${#domains[@]} -gt 0 ]; then
    step "HTTPS certificate for ${domains[*]}" "DNS of ${domains[0]} must point at this host and port 80 be open to the internet; pequod-agent -i certificates shows the CA's answer"
    for _ in $(seq 1 90); do
        served=$("$AGENT" -i certificates --json --state-dir "$STATE" 2>/dev/null) || served=""
        grep -q '"served": true' <<<"$served" && break
        sleep 1
    done
    "$AGENT" -i certificates --state-dir "$STATE" | sed 's/^/    /'
    served=$("$AGENT" -i certificates --json --state-dir "$STATE" 2>/dev/null) || served=""
    if grep -q '"served": true' <<<"$served"; then
        url="https://${domains[0]}/"
    else
        echo "    no certificate yet: the blog stays on plain HTTP; the agent tries again with back-off"
    fi
    done_step
fi

cat <<EOF

The blog is live: $url      (set up in ${SECONDS} s)
EOF
if [ -z "$repo" ]; then
    cat <<EOF

Publish with git push:
    git clone $SITE_REPO_DIR blog && cd blog
    \$EDITOR posts/my-post.md          # or: nikola new_post
    git add -A && git commit -m "A new post" && git push
The new post is live within seconds.
EOF
fi
cat <<EOF

Inspect:  $AGENT -i  ·  $AGENT -i services  ·  $logs
Deploys:  ${url}_site/   (its token: ./bootstrap.sh site token blog)
Sites:    ./bootstrap.sh site list  ·  ./bootstrap.sh site add NAME --domain DOMAIN   (the blog is the site blog)
Remove:   ./bootstrap.sh teardown      (keeps $SITE_REPO_DIR unless --purge)
EOF
