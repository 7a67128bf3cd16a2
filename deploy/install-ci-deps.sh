#!/usr/bin/env bash
# Installs what the deploy tests need from outside PyPI: promtool, from Debian's
# "prometheus" package. Idempotent and quiet: does nothing when promtool is on
# PATH. Runs as root without sudo (CI), or with sudo when there is one.
# Called from .ci/run; the tests skip (saying why) when promtool is missing.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "install-ci-deps: promtool missing and not root (no sudo): skipping" >&2
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-ci-deps: promtool missing and no apt-get: skipping" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# The package's service must not start on install (no init system in CI anyway).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  made_policy=1
fi
cleanup() { if [ "$made_policy" -eq 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

# A failed install does not fail CI: the promtool tests then skip and say why.
if ! { $SUDO apt-get update -qq >/dev/null &&
       $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
  echo "install-ci-deps: installing the Debian package 'prometheus' failed; promtool tests will skip" >&2
  exit 0
fi

command -v promtool >/dev/null 2>&1 || echo "install-ci-deps: promtool still missing; promtool tests will skip" >&2
