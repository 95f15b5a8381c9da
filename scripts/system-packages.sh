#!/usr/bin/env bash
# Install the Debian packages listed in scripts/system-packages.txt that are not installed yet.
# Installed ones cost one dpkg-query; apt-get runs (update once, then install) only for the rest.
set -euo pipefail
list="${1:-$(dirname "$0")/system-packages.txt}"
missing=()
while read -r package; do
    if [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null)" != ii* ]]; then
        missing+=("$package")
    fi
done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$list" | awk '{print $1}')
((${#missing[@]} == 0)) && exit 0
if ! command -v apt-get >/dev/null; then
    echo "system-packages: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
    exit 1
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "system-packages: missing ${missing[*]}; run: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
echo "system-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Another apt run may hold the lock (a parallel install): wait for it rather than fail.
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
