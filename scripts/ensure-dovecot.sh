#!/usr/bin/env bash
# The mailbox tests run a real Dovecot (IMAP and POP3), which PyPI does not ship: install the
# Debian packages where they are missing and this machine allows it (root with apt), else stop
# with one line saying how.
set -euo pipefail
PACKAGES=(dovecot-imapd dovecot-pop3d)

if command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; then
    if command -v doveadm >/dev/null 2>&1 || [ -x /usr/bin/doveadm ]; then
        exit 0
    fi
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${PACKAGES[*]} for the mailbox tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    # The packages start a system-wide Dovecot where an init system runs; the tests start their
    # own on free ports and do not need it.
    exit 0
fi
echo "Dovecot is missing: run 'sudo apt-get install ${PACKAGES[*]}' (Debian/Ubuntu), then make test again" >&2
exit 1
