#!/usr/bin/env bash
# Installs what the tests need from outside PyPI, from Debian's packages:
#   promtool and prometheus (package "prometheus": the deploy checks, the real-Prometheus test)
#   java and mvn (packages "openjdk-17-jre-headless", "maven": the Apache Kafka tier;
#   the Kafka jars themselves are fetched by `streamrec kafka --fetch-only` into ~/.cache)
# Idempotent and quiet: installs only what is missing. Runs as root without sudo
# (CI), or with sudo when there is one. Called by `make test`; the tests skip
# (saying why) when a tool is still missing.
set -euo pipefail

packages=()
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
if [ "${#packages[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "install-ci-deps: ${packages[*]} missing and not root (no sudo): skipping" >&2
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-ci-deps: ${packages[*]} missing and no apt-get: skipping" >&2
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

# A failed install does not fail here: the tests that need it then skip and say why.
if ! { $SUDO apt-get update -qq >/dev/null &&
       $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; }; then
  echo "install-ci-deps: installing the Debian packages ${packages[*]} failed; their tests will skip" >&2
  exit 0
fi

for tool in promtool java mvn; do
  command -v "$tool" >/dev/null 2>&1 || echo "install-ci-deps: $tool still missing; its tests will skip" >&2
done
