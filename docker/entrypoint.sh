#!/bin/sh
# syncer's container entrypoint, run by tini (PID 1). Then it execs syncer with the container's arguments
# (`docker run IMAGE status` runs `syncer status`); a command that starts with syncer, sh, bash, python or a path
# runs as given (compose's `apply` service chains `syncer apply && syncer grant ...` under sh).
#
# 1. Secrets from files. For every variable NAME_FILE where NAME is SYNCER_*, OPENAI_* or PGPASSWORD, NAME is
#    exported with the file's content (trailing newlines dropped) and NAME_FILE is unset, as the postgres image
#    does: compose and Kubernetes mount secrets as files, so none needs to sit in the container's environment.
#    An empty file leaves NAME unset. PGPASSWORD is libpq's: the password of a SYNCER_DATABASE_URL without one.
# 2. Models exported at build time (the slim image: SYNCER_BAKED_MODELS) are copied into
#    SYNCER_DATA_DIR/models when missing there: a volume or emptyDir mounted on that directory starts empty, and
#    syncer needs it writable (a lock file beside each export).
set -eu

fail() {
    echo "syncer-entrypoint: $*" >&2
    exit 2
}

load_secret_files() {
    for file_var in $(env | sed -n 's/^\(\(SYNCER_[A-Za-z0-9_]*\|OPENAI_[A-Za-z0-9_]*\|PGPASSWORD\)_FILE\)=.*/\1/p'); do
        var=${file_var%_FILE}
        eval "file=\${$file_var}"
        eval "already=\${$var+set}"
        [ "$already" != set ] || fail "both $var and $file_var are set: set only one"
        [ -r "$file" ] || fail "$file_var: cannot read $file"
        value=$(cat "$file")
        unset "$file_var"
        if [ -n "$value" ]; then
            export "$var=$value"
        fi
    done
}

seed_models() {
    baked=${SYNCER_BAKED_MODELS:-}
    [ -n "$baked" ] && [ -d "$baked" ] || return 0
    target=${SYNCER_DATA_DIR:-.syncer}/models
    mkdir -p "$target"
    for model in "$baked"/*/; do
        [ -f "${model}meta.json" ] || continue
        name=$(basename "$model")
        [ ! -f "$target/$name/meta.json" ] || continue
        # Copy beside, then rename into place: a copy cut short is never taken for a complete export.
        staging=$(mktemp -d "$target/.seed-XXXXXX")
        cp -R "${model}." "$staging/"
        mv -T "$staging" "$target/$name" 2>/dev/null || rm -rf "$staging"  # another container was first
    done
}

load_secret_files
seed_models
case "${1:-}" in
    syncer | sh | bash | python | python3 | */*) exec "$@" ;;
    *) exec syncer "$@" ;;
esac
