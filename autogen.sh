#!/bin/sh
# Regenerates configure and Makefile.in (needs autoconf, automake, pkg-config).
exec autoreconf -fi "$(dirname "$0")"
