#!/usr/bin/env bash
# Installs what the local stack needs from Debian's packages, if missing:
# a Java runtime, Maven (to fetch the Kafka jars once), redis-server and
# prometheus (with promtool), and chromium for the /map page test.
# Needs root (or sudo); prints what it would install otherwise.
set -euo pipefail

pkgs=()
command -v java >/dev/null || pkgs+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || pkgs+=(maven)
command -v redis-server >/dev/null || pkgs+=(redis-server)
command -v redis-cli >/dev/null || pkgs+=(redis-tools)
command -v prometheus >/dev/null || pkgs+=(prometheus)
command -v curl >/dev/null || pkgs+=(curl)
command -v chromium >/dev/null || pkgs+=(chromium)
((${#pkgs[@]})) || exit 0

if [[ $(id -u) -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "install-deps: please install: ${pkgs[*]} (apt-get install ${pkgs[*]})" >&2
    exit 1
fi
echo "install-deps: installing ${pkgs[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${pkgs[@]}" >/dev/null
