#!/bin/sh
# Publish from CI with the ONLINE keys only (timestamp, snapshot, channel roles).
# Root and targets keys never come near this machine: the script refuses to run if they do.
# See docs/OPERATIONS.md for the key ceremony, rotation and the upload order.
#
#   publish.sh release VERSION SOURCE_DIR   build SOURCE_DIR and publish VERSION to beta
#   publish.sh promote VERSION              publish the same bytes of VERSION in stable
#   publish.sh refresh                      re-sign the timestamp (and whatever nears expiry)
#
# Every mode then audits the repository (verify) and uploads it with 'sync' in the safe order
# (targets, roles, root versions, snapshot, timestamp last).
#
# Environment:
#   REPO_DIR                   the publisher's copy of the repository (kept between runs)
#   PUBLIC_DIR                 what clients read: a directory or a mounted bucket
#   PINNACLE_ONLINE_KEYS_B64   base64 of a tar.gz of the online key directory, from a CI secret
#                              (tar -C ci-keys -czf - . | base64 -w0), or
#   PINNACLE_KEYS              an online key directory already on disk
#   PINNACLE_KEY_PASSPHRASE    passphrase of the key files (a CI secret)
#   PLATFORM=any  TYPE=minor  WARN_DAYS=0.5  PINNACLE_RELEASE=pinnacle-release
set -eu

RELEASE=${PINNACLE_RELEASE:-pinnacle-release}
: "${REPO_DIR:?set REPO_DIR}"
: "${PUBLIC_DIR:?set PUBLIC_DIR}"

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
trap 'exit 130' INT TERM
if [ -n "${PINNACLE_ONLINE_KEYS_B64:-}" ]; then
    (umask 077 && mkdir "$workdir/keys" &&
        printf '%s' "$PINNACLE_ONLINE_KEYS_B64" | base64 -d | tar -xzf - -C "$workdir/keys")
    PINNACLE_KEYS="$workdir/keys"
fi
: "${PINNACLE_KEYS:?set PINNACLE_KEYS or PINNACLE_ONLINE_KEYS_B64}"
export PINNACLE_KEYS

# 'keys list' columns: role name keyid state private-key-location ("offline" when absent).
if $RELEASE keys list "$PINNACLE_KEYS" |
        awk '($1 == "root" || $1 == "targets") && $5 != "offline" { found = 1 } END { exit !found }'; then
    echo "publish.sh: refusing to run: the key directory holds a root or targets private key" >&2
    exit 2
fi

mode=${1:-}
case "$mode" in
    release)
        [ $# -eq 3 ] || { echo "usage: publish.sh release VERSION SOURCE_DIR" >&2; exit 2; }
        $RELEASE publish "$REPO_DIR" --channel beta --version "$2" --type "${TYPE:-minor}" \
            --platform "${PLATFORM:-any}" "$3"
        ;;
    promote)
        [ $# -eq 2 ] || { echo "usage: publish.sh promote VERSION" >&2; exit 2; }
        $RELEASE promote "$REPO_DIR" --from beta --to stable --version "$2"
        ;;
    refresh)
        $RELEASE refresh "$REPO_DIR"
        ;;
    *)
        echo "usage: publish.sh release VERSION SOURCE_DIR | promote VERSION | refresh" >&2
        exit 2
        ;;
esac

$RELEASE verify "$REPO_DIR"
$RELEASE sync "$REPO_DIR" "$PUBLIC_DIR"
# Fails the job (exit 14, EXPIRING_SOON in docs/OPERATIONS.md, naming the roles) when anything expires within WARN_DAYS: a timestamp
# that a working refresh job renews never gets that close; root and targets need their holders.
$RELEASE status "$REPO_DIR" --warn-days "${WARN_DAYS:-0.5}" >/dev/null
