#!/usr/bin/env bash
# Developer check before committing: the same gates as CI, stopping at the first failure.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace "$@"
