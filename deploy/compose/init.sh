#!/bin/sh
# The compose stack's first step (service `init`), on every `docker compose up`:
#
# - the development PKI: a CA and a certificate per service and for PostgreSQL
#   (borough-pki; existing files are kept);
# - every credential, made once from /dev/urandom: PostgreSQL's superuser password, each
#   service's database password, the admin token, the key that seals tenants' database
#   URLs, Grafana's admin password. Nothing is fixed in the repository.
#
# Everything is kept in this step's own volume (`pki`, which holds the CA's private key
# and is mounted nowhere else). Each service then gets a volume of its own holding only
# what it needs, readable by its user only, mounted at /run/borough; the services read
# their secrets from files there (BOROUGH_..._FILE).
#
# Read the admin token:      docker compose exec gateway cat /run/borough/admin-token
# Grafana's admin password:  docker compose exec grafana cat /run/borough/admin-password
# Delete a file under /pki/secrets (or a service's key pair) and run `up` again to make a
# new one; `docker compose down -v` forgets all of them with the data.
set -eu
umask 077
state=/pki
secrets=$state/secrets
mkdir -p "$secrets"

borough-pki ensure --dir "$state" --postgres-name postgres >/dev/null

random() { head -c 24 /dev/urandom | base64 | tr -d '\n/+='; }
sealing_key() { printf 'k1:%s' "$(head -c 32 /dev/urandom | base64 | tr -d '\n')"; }
# once NAME GENERATOR: makes the secret NAME unless it exists.
once() {
    [ -s "$secrets/$1" ] && return 0
    "$2" > "$secrets/$1.new"
    mv "$secrets/$1.new" "$secrets/$1"
}
once postgres-password random
once user-db-password random
once query-db-password random
once config-db-password random
once admin-token random
once secret-keys sealing_key
once grafana-admin-password random

secret() { cat "$secrets/$1"; }
url() { # role password: a login to the borough database, TLS verified against the CA
    printf 'postgres://%s:%s@postgres:5432/borough?sslmode=verify-full&sslrootcert=/run/borough/ca.crt' "$1" "$2"
}

# give SERVICE UID NAME=CONTENTS...: makes /out/SERVICE hold exactly these files, owned by
# UID and readable by it alone. A file whose contents are unchanged is left as it is (the
# services watch their certificates), a changed one replaced in one rename.
give() {
    out=/out/$1 uid=$2
    shift 2
    names=" "
    for pair in "$@"; do
        name=${pair%%=*}
        names="$names$name "
        printf '%s' "${pair#*=}" > "$out/.$name.new"
        if cmp -s "$out/.$name.new" "$out/$name"; then
            rm "$out/.$name.new"
        else
            chown "$uid:$uid" "$out/.$name.new"
            chmod 0400 "$out/.$name.new"
            mv "$out/.$name.new" "$out/$name"
        fi
    done
    for file in "$out"/* "$out"/.[!.]*; do
        [ -e "$file" ] || continue
        case "$names" in *" ${file##*/} "*) ;; *) rm -rf "$file" ;; esac
    done
    chown "$uid:$uid" "$out"
    chmod 0500 "$out"
}
ca=$(cat "$state/ca.crt")
give postgres 999 ca.crt="$ca" \
    postgres.crt="$(cat "$state/postgres.crt")" postgres.key="$(cat "$state/postgres.key")" \
    postgres-password="$(secret postgres-password)"
give migrate 10001 ca.crt="$ca" \
    migration-database-url="$(url postgres "$(secret postgres-password)")" \
    user-db-password="$(secret user-db-password)" \
    query-db-password="$(secret query-db-password)" \
    config-db-password="$(secret config-db-password)" \
    secret-keys="$(secret secret-keys)"
give user 10001 ca.crt="$ca" user.crt="$(cat "$state/user.crt")" user.key="$(cat "$state/user.key")" \
    database-url="$(url borough_user "$(secret user-db-password)")" \
    provisioner-database-url="$(url postgres "$(secret postgres-password)")" \
    secret-keys="$(secret secret-keys)"
give query 10001 ca.crt="$ca" query.crt="$(cat "$state/query.crt")" query.key="$(cat "$state/query.key")" \
    database-url="$(url borough_query "$(secret query-db-password)")"
give config 10001 ca.crt="$ca" config.crt="$(cat "$state/config.crt")" config.key="$(cat "$state/config.key")" \
    database-url="$(url borough_config "$(secret config-db-password)")"
give gateway 10001 ca.crt="$ca" \
    gateway.crt="$(cat "$state/gateway.crt")" gateway.key="$(cat "$state/gateway.key")" \
    admin-token="$(secret admin-token)"
give grafana 472 admin-password="$(secret grafana-admin-password)"
echo "init: credentials ready (admin token: docker compose exec gateway cat /run/borough/admin-token)"
