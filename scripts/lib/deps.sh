# Installs what Ward needs to build and test, only where it is missing. Sourced by scripts/*.
ward_install_debian_packages() {
  local missing=()
  for pkg in libssl-dev libevent-dev pkg-config openssl curl ca-certificates iproute2 util-linux haproxy; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

ward_install_python_packages() {
  local missing=()
  python3 -c "import pytest" 2>/dev/null || missing+=(pytest)
  python3 -c "import cryptography" 2>/dev/null || missing+=(cryptography)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Python packages: ${missing[*]}"
  python3 -m pip install -q "${missing[@]}"
}

ward_require_swift() {
  if ! command -v swift >/dev/null 2>&1; then
    [ -x /opt/swift/usr/bin/swift ] && export PATH=/opt/swift/usr/bin:$PATH
  fi
  command -v swift >/dev/null 2>&1 || { echo "swift is not installed (Swift 6.1 or newer is needed)" >&2; exit 1; }
}
