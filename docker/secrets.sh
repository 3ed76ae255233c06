#!/bin/sh
# Create the secret files docker/compose.yml reads, once: a random password for each database role, and the
# OpenAI API key from $OPENAI_API_KEY (an empty file when unset: the default local model needs no key).
# Existing files are kept; edit or delete them to change a secret (passwords only before the first `up`: the
# database takes them when it is initialized).
#
# The folder is private to you (0700); the files are world-readable (0644) because compose bind-mounts them
# as they are and the containers' users (postgres, uid 10001) must read them.
set -eu
dir=${SECRETS_DIR:-$(dirname "$0")/secrets}
mkdir -p "$dir"
chmod 700 "$dir"
umask 022
[ -e "$dir/.gitignore" ] || printf '*\n' > "$dir/.gitignore"
for name in postgres_password syncer_owner_password syncer_worker_password app_reader_password app_password; do
    # 24 random bytes as hex: no character needs quoting in a URL or in SQL.
    [ -e "$dir/$name" ] || od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$dir/$name"
done
[ -e "$dir/openai_api_key" ] || printf '%s' "${OPENAI_API_KEY:-}" > "$dir/openai_api_key"
echo "secrets in $dir"
