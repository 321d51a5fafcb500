#!/bin/sh
# What `make test` needs from the system besides Python: Debian's chromium (the browser tests drive it
# through Playwright, never a downloaded browser) and CJK fonts (without them every Chinese character of
# the page renders as a box). Installs them when missing and running as root on Debian/Ubuntu; otherwise
# stops before the suite with the one command to run.
# FOODIE_CHROMIUM / FOODIE_FONT_CHECK let the test of this script point at a missing browser or font.
set -u
missing=""
command -v "${FOODIE_CHROMIUM:-chromium}" >/dev/null 2>&1 || missing="chromium"
if ! { command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list "${FOODIE_FONT_CHECK:-:lang=zh}" family 2>/dev/null)" ]; }; then
  missing="$missing fonts-noto-cjk"
fi
missing=$(echo $missing)
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[make test] installing Debian packages the browser tests need: $missing"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; then
    exit 0
  fi
  echo "[make test] apt-get install $missing failed (output above); install them, then run make test again." >&2
  exit 1
fi
echo "make test: the browser tests need $missing. Install, then run make test again:" >&2
echo "  sudo apt-get install -y $missing" >&2
exit 1
