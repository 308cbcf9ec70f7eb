# Sourced by the Dockerfiles' RUN steps (POSIX sh): trust an extra CA bundle during the build.
#
#   RUN --mount=type=secret,id=ca_bundle . /usr/local/lib/r3/build-ca.sh && pip install ...
#
# When the build secret `ca_bundle` is given and not empty (a company CA behind a
# TLS-intercepting proxy, say), its certificates are added to the base image's bundle in a
# temporary file that pip, requests, curl and apt use for this RUN step only; the file is
# removed when the step's shell exits, so nothing of it stays in a layer. Without the secret
# this does nothing. (R3_BUILD_CA_SECRET and R3_BUILD_APT_CONF_DIR move the two paths, for
# the tests.)
r3_ca_secret="${R3_BUILD_CA_SECRET:-/run/secrets/ca_bundle}"
r3_apt_conf="${R3_BUILD_APT_CONF_DIR:-/etc/apt/apt.conf.d}"
if [ -s "$r3_ca_secret" ]; then
    r3_build_ca="$(mktemp /tmp/r3-build-ca.XXXXXX)"
    for r3_system_ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        if [ -s "$r3_system_ca" ]; then
            cat "$r3_system_ca" >> "$r3_build_ca"
            break
        fi
    done
    cat "$r3_ca_secret" >> "$r3_build_ca"
    export PIP_CERT="$r3_build_ca" REQUESTS_CA_BUNDLE="$r3_build_ca" \
        SSL_CERT_FILE="$r3_build_ca" CURL_CA_BUNDLE="$r3_build_ca"
    if [ -d "$r3_apt_conf" ]; then
        printf 'Acquire::https::CAInfo "%s";\n' "$r3_build_ca" > "$r3_apt_conf/99r3-build-ca"
    fi
    trap 'rm -f "$r3_build_ca" "$r3_apt_conf/99r3-build-ca"' EXIT
fi
